package daemon

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net/http"
	"os"
	"syscall"

	"vdisk/internal/api"
	"vdisk/internal/blockdev"
	"vdisk/internal/image"
	"vdisk/internal/loop"
	"vdisk/internal/nbd/kernel"
	"vdisk/internal/stack"
	"vdisk/internal/ublk"
)

// maxRequest bounds a request body.
const maxRequest = 1 << 20

// Handler returns the control API's HTTP handler.
func (d *Daemon) Handler() http.Handler {
	mux := http.NewServeMux()
	mux.Handle("GET /metrics", d.metrics.Handler())
	mux.HandleFunc("GET "+api.PathVersion, func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, api.VersionInfo{API: api.Version, Version: d.opt.Version, PID: os.Getpid()})
	})
	mux.HandleFunc("GET "+api.PathDisks, func(w http.ResponseWriter, r *http.Request) {
		reply(w, http.StatusOK, api.DiskList{Disks: d.List()})
	})
	mux.HandleFunc("POST "+api.PathDisks, func(w http.ResponseWriter, r *http.Request) {
		var req api.OpenRequest
		ok := decode(w, r, &req)
		defer clear(req.Passphrase)
		if !ok {
			return
		}
		if req.File == "" {
			replyErr(w, api.Errorf(api.CodeBadRequest, "no file given"))
			return
		}
		rec, reused, err := d.Open(r.Context(), req)
		if err != nil {
			replyErr(w, err)
			return
		}
		status := http.StatusCreated
		if reused {
			status = http.StatusOK
		}
		reply(w, status, rec)
	})
	mux.HandleFunc("GET "+api.PathDisk+"{id}", func(w http.ResponseWriter, r *http.Request) {
		rec, err := d.Get(r.PathValue("id"))
		if err != nil {
			replyErr(w, err)
			return
		}
		reply(w, http.StatusOK, rec)
	})
	mux.HandleFunc("DELETE "+api.PathDisk+"{id}", func(w http.ResponseWriter, r *http.Request) {
		force := false
		switch r.URL.Query().Get("force") {
		case "", "false", "0":
		case "true", "1":
			force = true
		default:
			replyErr(w, api.Errorf(api.CodeBadRequest, "force=%q: want true or false", r.URL.Query().Get("force")))
			return
		}
		rec, err := d.Close(r.Context(), r.PathValue("id"), force)
		if err != nil {
			replyErr(w, err)
			return
		}
		reply(w, http.StatusOK, rec)
	})
	mux.HandleFunc("POST "+api.PathDisk+"{id}/resize", func(w http.ResponseWriter, r *http.Request) {
		var req api.ResizeRequest
		if !decode(w, r, &req) {
			return
		}
		rec, err := d.Resize(r.Context(), r.PathValue("id"), req.Size)
		if err != nil {
			replyErr(w, err)
			return
		}
		reply(w, http.StatusOK, rec)
	})
	mux.HandleFunc("POST "+api.PathInspect, func(w http.ResponseWriter, r *http.Request) {
		var req api.InspectRequest
		if !decode(w, r, &req) {
			return
		}
		im, err := d.Inspect(r.Context(), req)
		if err != nil {
			replyErr(w, err)
			return
		}
		reply(w, http.StatusOK, im)
	})
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) {
		replyErr(w, api.Errorf(api.CodeNotFound, "no API endpoint %s %s (this daemon speaks %s)", r.Method, r.URL.Path, api.Version))
	})
	return mux
}

// decode reads a JSON request body into v, answering the error itself.
// It reads the body to its end: only then does the server watch the
// connection, and cancel the request's context when the client hangs up.
// The body may carry a passphrase (api.OpenRequest): every buffer it was
// read into is cleared before decode returns (the connection's own
// bufio.Reader is net/http's and is not).
func decode(w http.ResponseWriter, r *http.Request, v any) bool {
	b, err := api.ReadWiped(http.MaxBytesReader(w, r.Body, maxRequest))
	defer clear(b)
	if err == nil {
		err = decodeBody(b, v)
	}
	if err != nil {
		replyErr(w, api.Errorf(api.CodeBadRequest, "malformed request body: %v", err))
		return false
	}
	return true
}

// decodeBody decodes one JSON document, and nothing after it, into v: the
// request decoding of every endpoint that takes a body.
func decodeBody(b []byte, v any) error {
	if err := json.Unmarshal(b, v); err != nil {
		if len(bytes.TrimSpace(b)) == 0 {
			return io.EOF
		}
		return err
	}
	return nil
}

// reply writes v as JSON with status.
func reply(w http.ResponseWriter, status int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	enc := json.NewEncoder(w)
	enc.SetIndent("", "  ")
	enc.Encode(v) //nolint:errcheck // the client went away; nothing to do
}

// replyErr writes err as an api.Error with its status.
func replyErr(w http.ResponseWriter, err error) {
	e := toAPIError(err)
	reply(w, statusOf(e.Code), e)
}

// toAPIError maps an error to the API's codes; its message becomes the
// human message.
func toAPIError(err error) *api.Error {
	var ae *api.Error
	if errors.As(err, &ae) {
		return ae
	}
	code := api.CodeInternal
	switch {
	case errors.Is(err, stack.ErrNeedPassphrase):
		code = api.CodePassphraseRequired
	case errors.Is(err, stack.ErrWrongPassphrase):
		code = api.CodeWrongPassphrase
	case errors.Is(err, stack.ErrLeaseHeld):
		code = api.CodeLeaseHeld
	case errors.Is(err, stack.ErrNoImage):
		code = api.CodeNoFile
	case errors.Is(err, blockdev.ErrLocked):
		code = api.CodeLocked
	case isNoSpace(err):
		code = api.CodeNoSpace
	case errors.Is(err, loop.ErrNoFreeDevice):
		code = api.CodeNoLoop
	case errors.Is(err, loop.ErrBusy):
		code = api.CodeBusy
	case errors.Is(err, ErrFUSEUnavailable):
		code = api.CodeFUSEUnavailable
	case errors.Is(err, kernel.ErrUnavailable), errors.Is(err, ublk.ErrUnavailable):
		code = api.CodeViaUnavailable
	case errors.Is(err, kernel.ErrBusy):
		code = api.CodeBusy
	case errors.Is(err, image.ErrUnknownFormat):
		code = api.CodeUnknownFormat
	case errors.Is(err, image.ErrBackingRefused), errors.Is(err, image.ErrChainTooDeep), errors.Is(err, stack.ErrKDFLimit):
		code = api.CodeRefused
	case errors.Is(err, image.ErrWrongFormat):
		code = api.CodeWrongFormat
	case errors.Is(err, image.ErrUnsupported), errors.Is(err, stack.ErrNoFencing):
		code = api.CodeUnsupported
	case errors.Is(err, blockdev.ErrCorrupt):
		code = api.CodeCorrupt
	case errors.Is(err, context.DeadlineExceeded):
		code = api.CodeTimeout
	case errors.Is(err, fs.ErrPermission), errors.Is(err, syscall.EROFS):
		code = api.CodePermission
	case errors.Is(err, fs.ErrNotExist):
		code = api.CodeNoFile
	}
	return &api.Error{Code: code, Message: err.Error()}
}

// statusOf is the HTTP status of an error code.
func statusOf(code string) int {
	switch code {
	case api.CodeBadRequest, api.CodeInvalidSize, api.CodeIsDirectory, api.CodeIsDevice,
		api.CodeNoParent, api.CodeUnknownFormat, api.CodeBadVia, api.CodeUnsupported, api.CodeCorrupt, api.CodeWrongFormat:
		return http.StatusBadRequest
	case api.CodeRefused:
		return http.StatusForbidden
	case api.CodeNotFound, api.CodeNoFile:
		return http.StatusNotFound
	case api.CodeAlreadyOpen, api.CodeLocked, api.CodeBusy, api.CodeLeaseHeld:
		return http.StatusConflict
	case api.CodePassphraseRequired, api.CodeWrongPassphrase:
		return http.StatusUnauthorized
	case api.CodePermission:
		return http.StatusForbidden
	case api.CodeTimeout:
		return http.StatusGatewayTimeout
	case api.CodeShuttingDown, api.CodeNoLoop, api.CodeFUSEUnavailable, api.CodeViaUnavailable, api.CodeNoSpace:
		return http.StatusServiceUnavailable
	}
	return http.StatusInternalServerError
}

// Inspect returns the facts of an image file: from the registry when it is
// open, else by opening it read-only without taking its lock (nor the
// daemon's image lock: it changes nothing). ctx (the request's) and
// Options.OpenTimeout bound it.
func (d *Daemon) Inspect(ctx context.Context, req api.InspectRequest) (api.Image, error) {
	path, err := api.Canonical(req.File)
	if err != nil {
		return api.Image{}, err
	}
	url := api.IsURL(path)
	if !url {
		if err := checkFile(path, api.OpenRequest{File: path}); err != nil {
			return api.Image{}, err
		}
	}
	if req.BackingDirs, err = backingDirs(path, req.BackingDirs); err != nil {
		return api.Image{}, err
	}
	ctx, stop := d.withLife(ctx)
	defer stop()
	ctx, cancel := d.opContext(ctx)
	defer cancel()
	id := api.DiskID(path)
	im := api.Image{ID: id, File: path, UniqueID: api.UniqueID(path)}
	d.mu.Lock()
	dk, open := d.disks[id]
	var r api.Disk
	var openS3 *api.S3Options
	if open {
		r, openS3 = dk.rec, dk.s3
	}
	d.mu.Unlock()
	if open && r.State == api.StateOpen {
		im.Format, im.Size, im.LogicalBlockSize, im.PhysicalBlockSize = r.Format, r.Size, r.LogicalBlockSize, r.PhysicalBlockSize
		im.MediaType, im.Open, im.Encrypted = r.MediaType, true, r.Encrypted
	} else {
		sk, err := inspectImage(ctx, path, req, d.log)
		if err != nil && ctx.Err() != nil {
			return api.Image{}, d.ctxError(ctx, "inspect "+path)
		}
		if err != nil {
			return api.Image{}, fmt.Errorf("inspect %s: %w", path, err)
		}
		dev := sk.Device
		info := blockdev.InfoOf(dev)
		im.Format, im.Size = sk.Format, dev.Size()
		im.LogicalBlockSize, im.PhysicalBlockSize = info.LogicalBlockSize, info.PhysicalBlockSize
		im.Encrypted = stack.IsLUKS(dev)
		im.MediaType = api.MediaFixed
		if sk.Format == formatISO {
			im.MediaType = api.MediaCDROM
		}
		if ins, ok := dev.(image.Inspector); ok {
			// The opened format has the facts its file holds: no
			// second open to read them.
			im.Details = formatDetails(ins.Facts())
		}
		dev.Close()
	}
	im.Sectors, im.Geometry = api.Sectors(im.Size), api.CHS(im.Size)
	if im.Format != image.Raw && im.Details == nil {
		// The format's facts, read from its file wherever it lives.
		if fa, err := stack.Info(ctx, path, im.Format, inspectS3(req.S3, openS3)); err == nil {
			im.Details = formatDetails(fa)
		}
	}
	if url {
		im.Writable = true
		if r, err := stack.InspectS3(ctx, path, inspectS3(req.S3, openS3)); err == nil {
			im.Allocated = r.StoredBytes
			im.Store = storeDetails(r)
		} else {
			d.log.Warn("inspect object store", "file", path, "err", err)
		}
		return im, nil
	}
	im.Writable = im.MediaType != api.MediaCDROM && syscall.Access(path, 2 /* W_OK */) == nil
	var st syscall.Stat_t
	if syscall.Stat(path, &st) == nil {
		im.Allocated = st.Blocks * 512
	}
	return im, nil
}

// inspectS3 is how to reach the store of an image being inspected: the
// request's options, else those it was opened with (nil: none).
func inspectS3(req, open *api.S3Options) stack.S3Options {
	o := req
	if o == nil {
		o = open
	}
	if o == nil {
		return stack.S3Options{}
	}
	return stack.S3Options{Endpoint: o.Endpoint, Region: o.Region, Profile: o.Profile}
}

// storeDetails copies what the object store holds of an image.
func storeDetails(r stack.StoreReport) *api.StoreDetails {
	m := r.Manifest
	sd := &api.StoreDetails{ChunkSize: m.ChunkSize, Chunks: r.Chunks, Created: m.Created, LeaseHolder: r.Holder}
	if m.ImageFormat != "" {
		sd.Capacity, sd.FileLength = m.Size, m.Length
	}
	if r.Holder != "" {
		exp := r.Expires
		sd.LeaseExpires = &exp
	}
	return sd
}

// formatDetails copies the format facts the API shows.
func formatDetails(fa *image.Facts) *api.FormatDetails {
	fd := &api.FormatDetails{
		ClusterSize: fa.ClusterSize, Compat: fa.Compat,
		BackingFile: fa.BackingFile, BackingFormat: fa.BackingFormat,
		Dirty: fa.Dirty, RefcountBits: fa.RefcountBits, LazyRefcounts: fa.LazyRefcounts,
		ExtendedL2: fa.ExtendedL2, CompressionType: fa.CompressionType,
	}
	for _, sn := range fa.Snapshots {
		fd.Snapshots = append(fd.Snapshots, api.Snapshot{ID: sn.ID, Name: sn.Name, Date: sn.DateSec, VMStateSize: sn.VMStateSize})
	}
	return fd
}
