package qcow2

import (
	"fmt"

	"vdisk/internal/blockdev"
)

// allSubclusters is an extended-L2 bitmap with every subcluster allocated.
const allSubclusters = 0xffffffff

// WriteAt writes len(p) bytes at guest offset off. Writes to allocated
// clusters go straight to the file; a write to an unallocated, shared,
// zero or compressed cluster allocates a cluster, fills it (from the
// backing file for a partial write) and then links it into the L2 table.
func (img *Image) WriteAt(p []byte, off int64) (int, error) {
	if img.readOnly {
		return 0, blockdev.ErrReadOnly
	}
	if err := img.begin(off, int64(len(p))); err != nil {
		return 0, err
	}
	defer img.ioMu.RUnlock()
	end := off + int64(len(p))
	for pos := off; pos < end; {
		host, n, err := img.inPlaceRun(pos, end)
		if err != nil {
			return int(pos - off), err
		}
		if n > 0 {
			if err := img.writeHost(p[pos-off:pos-off+n], host); err != nil {
				return int(pos - off), err
			}
			pos += n
			continue
		}
		if pos%img.cs == 0 && end-pos >= 2*img.cs {
			k, err := img.allocRun(pos/img.cs, (end-pos)/img.cs, p[pos-off:])
			if err != nil {
				return int(pos - off), err
			}
			if k > 0 {
				pos += k * img.cs
				continue
			}
		}
		n = min(img.cs-pos%img.cs, end-pos)
		if err := img.writeCluster(pos/img.cs, pos%img.cs, p[pos-off:pos-off+n]); err != nil {
			return int(pos - off), err
		}
		pos += n
	}
	return len(p), nil
}

// maxAllocRun bounds the clusters allocRun allocates at once.
const maxAllocRun = 512

// allocRun writes whole guest clusters [vc, vc+k) from data into k new,
// contiguous host clusters with one pwrite, when at least two clusters
// from vc on are unallocated, zero or compressed (so nothing of theirs
// needs keeping). It returns k, 0 when the run does not apply.
func (img *Image) allocRun(vc, max int64, data []byte) (int64, error) {
	img.mu.Lock()
	// At most half a refcount block: a run that meets a missing block
	// then still fits in the free clusters after the block alloc places
	// at the start of its range.
	k := int64(0)
	for k < min(max, maxAllocRun, img.rbEntries()/2) {
		c := vc + k
		if img.inflight[c] != nil {
			break
		}
		e, _, err := img.l2Entry(c)
		if err != nil {
			img.mu.Unlock()
			return 0, err
		}
		if e&flagCompressed == 0 && e&offsetMask != 0 {
			break
		}
		k++
	}
	if k < 2 {
		img.mu.Unlock()
		return 0, nil
	}
	defer img.claim(vc, k)()
	olds := make([]uint64, k)
	for i := range k {
		t, err := img.l2Table((vc+i)/img.l2n, true)
		if err != nil {
			return 0, err
		}
		olds[i], _ = img.entryAt(t, (vc+i)%img.l2n)
	}
	target, err := img.alloc(k)
	if err != nil {
		return 0, err
	}
	img.mu.Unlock()
	err = img.writeHost(data[:k*img.cs], target)
	img.mu.Lock()
	if err != nil {
		for i := range k {
			img.pendingFree = append(img.pendingFree, target/img.cs+i)
		}
		return 0, err
	}
	nbm := uint64(0)
	if img.h.extL2() {
		nbm = allSubclusters
	}
	for i := range k {
		t, err := img.l2Table((vc+i)/img.l2n, true)
		if err != nil {
			return 0, err
		}
		img.setEntry(t, (vc+i)%img.l2n, uint64(target+i*img.cs)|flagCopied, nbm)
		img.dropEntry(olds[i])
	}
	return k, nil
}

// inPlaceRun returns the longest run of guest bytes from pos (up to end)
// that can be written straight to contiguous host bytes at host; n is 0
// when the first cluster needs the slow path.
func (img *Image) inPlaceRun(pos, end int64) (host, n int64, err error) {
	img.mu.Lock()
	defer img.mu.Unlock()
	for pos+n < end {
		p := pos + n
		vc := p / img.cs
		if img.inflight[vc] != nil {
			break
		}
		e, bm, err := img.l2Entry(vc)
		if err != nil {
			return 0, 0, err
		}
		c := min(img.cs-p%img.cs, end-p)
		h, ok := img.inPlace(vc, e, bm, p%img.cs, c)
		if !ok || (n > 0 && h != host+n) {
			break
		}
		if n == 0 {
			host = h
		}
		n += c
	}
	return host, n, nil
}

// claim marks guest clusters [vc, vc+n) as being allocated, with mu held;
// the function it returns ends the claim, wakes the waiters and unlocks mu.
func (img *Image) claim(vc, n int64) (release func()) {
	done := make(chan struct{})
	for c := vc; c < vc+n; c++ {
		img.inflight[c] = done
	}
	return func() {
		for c := vc; c < vc+n; c++ {
			delete(img.inflight, c)
		}
		close(done)
		img.mu.Unlock()
	}
}

// waitCluster waits, with mu held, until no allocation of guest cluster vc
// is in flight.
func (img *Image) waitCluster(vc int64) {
	for {
		ch := img.inflight[vc]
		if ch == nil {
			return
		}
		img.mu.Unlock()
		<-ch
		img.mu.Lock()
	}
}

// inPlace returns the host offset at which data for bytes [in, in+n) of a
// cluster with entry e and bitmap bm can be written directly.
func (img *Image) inPlace(vc int64, e, bm uint64, in, n int64) (int64, bool) {
	off := int64(e & offsetMask)
	if off == 0 || e&(flagCompressed) != 0 || e&flagCopied == 0 || img.l1[vc/img.l2n]&flagCopied == 0 {
		return 0, false
	}
	if img.h.extL2() {
		sc := img.cs / 32
		for i := in / sc; i <= (in+n-1)/sc; i++ {
			if bm&(1<<i) == 0 {
				return 0, false
			}
		}
	} else if img.h.version >= 3 && e&flagZero != 0 {
		return 0, false
	}
	if img.checkData(off) != nil {
		return 0, false
	}
	return off + in, true
}

// writeCluster writes data at byte in of guest cluster vc.
func (img *Image) writeCluster(vc, in int64, data []byte) error {
	img.mu.Lock()
	img.waitCluster(vc)
	e, bm, err := img.l2Entry(vc)
	if err != nil {
		img.mu.Unlock()
		return err
	}
	if host, ok := img.inPlace(vc, e, bm, in, int64(len(data))); ok {
		img.mu.Unlock()
		if _, err := img.f.WriteAt(data, host); err != nil {
			return fmt.Errorf("qcow2: write data at %#x: %w", host, err)
		}
		return nil
	}
	defer img.claim(vc, 1)()
	t, err := img.l2Table(vc/img.l2n, true)
	if err != nil {
		return err
	}
	e, bm = img.entryAt(t, vc%img.l2n)
	old := int64(e & offsetMask)
	target, fresh := old, false
	if e&flagCompressed != 0 || old == 0 {
		fresh = true
	} else if e&flagCopied == 0 {
		rc, err := img.refcount(old / img.cs)
		if err != nil {
			return err
		}
		fresh = rc != 1
	} else if err := img.checkData(old); err != nil {
		return err
	}
	// A new cluster past the end of the file reads as zeroes already: when
	// the cluster's content is zeroes too, only the data needs writing.
	onlyData := false
	if fresh {
		end := img.fileEnd
		if target, err = img.alloc(1); err != nil {
			return err
		}
		onlyData = target >= end && img.readsZero(vc, e, bm)
	}
	img.mu.Unlock()
	if onlyData {
		err = img.writeHost(data, target+in)
	} else {
		err = img.fill(vc, e, bm, in, data, target, !fresh)
	}
	img.mu.Lock()
	if err != nil {
		if fresh {
			img.pendingFree = append(img.pendingFree, target/img.cs)
		}
		return err
	}
	if t, err = img.l2Table(vc/img.l2n, true); err != nil {
		return err
	}
	nbm := uint64(0)
	if img.h.extL2() {
		nbm = allSubclusters
	}
	img.setEntry(t, vc%img.l2n, uint64(target)|flagCopied, nbm)
	if fresh {
		img.dropEntry(e)
	}
	return nil
}

// fill writes a whole cluster at host offset target: data at byte in, the
// rest from the cluster's current content (entry e, bitmap bm). When the
// cluster is reused in place (extended L2), subclusters that are already
// allocated keep their bytes except where data lands: other writers may be
// writing into them right now.
func (img *Image) fill(vc int64, e, bm uint64, in int64, data []byte, target int64, reuse bool) error {
	if int64(len(data)) == img.cs {
		return img.writeHost(data, target)
	}
	buf := make([]byte, img.cs)
	if err := img.readCluster(vc, e, bm, buf); err != nil {
		return err
	}
	copy(buf[in:], data)
	if !reuse || !img.h.extL2() {
		return img.writeHost(buf, target)
	}
	sc := img.cs / 32
	dEnd := in + int64(len(data))
	start := int64(-1)
	for pos := int64(0); pos <= img.cs; pos++ {
		need := false
		if pos < img.cs {
			need = (pos >= in && pos < dEnd) || bm&(1<<(pos/sc)) == 0
		}
		switch {
		case need && start < 0:
			start = pos
		case !need && start >= 0:
			if err := img.writeHost(buf[start:pos], target+start); err != nil {
				return err
			}
			start = -1
		}
	}
	return nil
}

// writeHost writes b at host offset off.
func (img *Image) writeHost(b []byte, off int64) error {
	if _, err := img.f.WriteAt(b, off); err != nil {
		return fmt.Errorf("qcow2: write data at %#x: %w", off, err)
	}
	return nil
}

// readsZero reports whether guest cluster vc, with entry e and bitmap bm,
// reads as zeroes without looking at data.
func (img *Image) readsZero(vc int64, e, bm uint64) bool {
	noBacking := img.backing == nil || vc*img.cs >= img.backingSize
	switch {
	case e&flagCompressed != 0:
		return false
	case img.h.extL2():
		return bm&allSubclusters == 0 && (noBacking || ^(bm>>32)&allSubclusters == 0)
	case img.h.version >= 3 && e&flagZero != 0:
		return true
	}
	return e&offsetMask == 0 && noBacking
}

// dropEntry queues the release of the host clusters an L2 entry that is
// being replaced referenced. It runs with mu held.
func (img *Image) dropEntry(e uint64) {
	if e&flagCompressed != 0 {
		off, n := img.compressed(e)
		for c := off / img.cs; c <= (off+n-1)/img.cs; c++ {
			img.pendingFree = append(img.pendingFree, c)
		}
		return
	}
	if off := int64(e & offsetMask); off != 0 {
		img.pendingFree = append(img.pendingFree, off/img.cs)
	}
}
