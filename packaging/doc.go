// Package packaging holds what installs vdisk on a host: the systemd units
// (systemd/), the Debian package's nfpm configuration (deb/), and the tests
// that check them against the real tools (systemd-analyze,
// systemd-socket-activate, dpkg). It has no Go code of its own.
package packaging
