// Package api defines the vdisk control API: the JSON documents the daemon
// and its clients exchange over HTTP on the daemon's unix socket, the paths
// they are exchanged on, and the small pure functions both sides share
// (disk ids, CHS geometry).
//
// The JSON is stable: fields are only ever added, never renamed or removed,
// and `vdisk list --json`, `vdisk open --json` and `vdisk info --json` print
// these documents unchanged.
//
// # The wire contract
//
// The daemon listens on a unix socket (default /run/vdisk/vdisk.sock, mode
// 0600, root only) and speaks HTTP/1.1 with JSON bodies:
//
//	GET    /v1/version             → 200 VersionInfo
//	GET    /v1/disks               → 200 DiskList
//	POST   /v1/disks   OpenRequest → 201 Disk (200 Disk when Reuse found it open)
//	GET    /v1/disks/{id}          → 200 Disk
//	DELETE /v1/disks/{id}[?force=true] → 200 Disk (the record as it was)
//	POST   /v1/inspect InspectRequest → 200 Image
//
// Every other answer is an Error with a non-2xx status:
//
//	{"code": "already_open",
//	 "message": "/srv/a.img is already open as /dev/loop3 (id 3f2a9c0d1b7e)",
//	 "disk": {...}}
//
// A Disk as `vdisk open --json`, `vdisk info --json` and (in a DiskList)
// `vdisk list --json` print it:
//
//	{
//	  "id": "3f2a9c0d1b7e",
//	  "device": "/dev/loop3",
//	  "file": "/srv/a.img",
//	  "format": "raw",
//	  "size": 104857600,
//	  "sectors": 204800,
//	  "logical_block_size": 512,
//	  "physical_block_size": 4096,
//	  "geometry": {"cylinders": 12, "heads": 255, "sectors_per_track": 63, "bytes_per_sector": 512},
//	  "read_only": false,
//	  "writable": true,
//	  "via": "loop",
//	  "major": 7,
//	  "minor": 3,
//	  "devno": "7:3",
//	  "removable": false,
//	  "hotplug": true,
//	  "media_type": "fixed",
//	  "unique_id": "3f2a9c0d1b7e…(64 hex digits)",
//	  "opened_at": "2026-11-25T22:10:00Z",
//	  "state": "open"
//	}
//
// `vdisk info --json` of a file that is not open prints an Image instead
// (with "open": false). A disk the daemon had before a restart and could not
// re-open is listed with "state" locked, missing or failed, an empty
// "device" and the reason in "error"; closing it forgets it. An encrypted
// disk ("encrypted": true) is always locked after a restart, because its
// passphrase is never stored: opening it again with the passphrase unlocks
// it. An open s3:// disk whose object store keeps failing is listed
// "degraded", its device still set, the reason in "error". The error codes
// are the Code constants; an encrypted image opened without a passphrase
// answers "passphrase_required", and the client asks and tries again.
//
// An open request may carry "backing_dirs" (absolute directory trees,
// beside the image's own, in which the files the image names - backing
// files, parents, VMDK extents - may lie) and "no_backing" (serve the top
// layer alone); the disk's record shows both, and the daemon keeps them to
// reopen the disk after a restart. By default only the image's own
// directory tree is trusted.
//
// The daemon answers every request at once whatever one image is doing: an
// open runs under its request (a client that hangs up cancels it) and
// under the daemon's open timeout, after which it answers "timeout"
// (504). Two requests on the same image take turns.
//
// Fields are only ever added. Clients ignore fields they do not know.
package api
