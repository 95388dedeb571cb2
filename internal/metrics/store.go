package metrics

// StoreObserver returns the function an object store's requests are told
// to (objstore.Observer, through stack.S3Options.Observe): it counts them
// by operation and outcome, and the payload bytes they move.
func (r *Registry) StoreObserver() func(op, status string, read, written int64) {
	read, written := r.storeBytes.WithLabelValues("read"), r.storeBytes.WithLabelValues("written")
	return func(op, status string, nr, nw int64) {
		r.storeRequests.WithLabelValues(op, status).Inc()
		if nr > 0 {
			read.Add(float64(nr))
		}
		if nw > 0 {
			written.Add(float64(nw))
		}
	}
}

// StoreRetries returns the function an object store's client calls on
// every retry of a request (stack.S3Options.OnRetry), counted as
// vdisk_objstore_retries_total.
func (r *Registry) StoreRetries() func() {
	return r.storeRetries.Inc
}
