package vmdk

import (
	"bufio"
	"fmt"
	"strconv"
	"strings"
)

// Descriptor limits.
const (
	// maxDescriptor bounds the descriptor text read from a file.
	maxDescriptor = 1 << 20
	// maxExtents bounds the extents of one disk (a 8 TiB twoGbMaxExtent
	// disk has 4096).
	maxExtents = 4096
	// noParent is the parentCID of a disk without a parent.
	noParent = "ffffffff"
)

// Extent kinds.
const (
	kindSparse = "SPARSE"
	kindFlat   = "FLAT"
	kindZero   = "ZERO"
	kindVMFS   = "VMFS"
)

// extentLine is one extent of the descriptor:
// ACCESS SECTORS TYPE ["FILE" [OFFSET]].
type extentLine struct {
	access  string // RW, RDONLY or NOACCESS
	sectors int64
	kind    string
	file    string
	offset  int64 // sectors into the file (FLAT)
}

// descriptor is a parsed descriptor file.
type descriptor struct {
	version    int
	cid        string
	parentCID  string
	createType string
	parentHint string
	extents    []extentLine
	ddb        []string // "key = \"value\"" lines, kept as written
}

// parseDescriptor parses descriptor text.
func parseDescriptor(text string) (*descriptor, error) {
	if len(text) > maxDescriptor {
		return nil, corruptf("descriptor of %d bytes is larger than %d", len(text), maxDescriptor)
	}
	d := &descriptor{parentCID: noParent}
	sc := bufio.NewScanner(strings.NewReader(text))
	sc.Buffer(make([]byte, 4096), maxDescriptor)
	sawHeader := false
	for n := 1; sc.Scan(); n++ {
		line := strings.TrimSpace(strings.TrimRight(sc.Text(), "\x00\r"))
		if line == "# Disk DescriptorFile" {
			sawHeader = true
		}
		if line == "" || line[0] == '#' {
			continue
		}
		if strings.HasPrefix(line, "RW ") || strings.HasPrefix(line, "RDONLY ") || strings.HasPrefix(line, "NOACCESS ") {
			e, err := parseExtent(line)
			if err != nil {
				return nil, fmt.Errorf("vmdk: descriptor line %d: %w", n, err)
			}
			if len(d.extents) >= maxExtents {
				return nil, corruptf("descriptor has more than %d extents", maxExtents)
			}
			d.extents = append(d.extents, e)
			continue
		}
		k, v, ok := strings.Cut(line, "=")
		if !ok {
			return nil, corruptf("descriptor line %d (%.40q) is not key=value", n, line)
		}
		k = strings.TrimSpace(k)
		v = strings.Trim(strings.TrimSpace(v), `"`)
		switch {
		case k == "version":
			d.version, _ = strconv.Atoi(v)
		case k == "CID":
			d.cid = v
		case k == "parentCID":
			d.parentCID = v
		case k == "createType":
			d.createType = v
		case k == "parentFileNameHint":
			d.parentHint = v
		case strings.HasPrefix(k, "ddb."):
			d.ddb = append(d.ddb, line)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, corruptf("descriptor: %v", err)
	}
	if !sawHeader && d.createType == "" {
		return nil, ErrNotVMDK
	}
	if len(d.extents) == 0 {
		return nil, corruptf("descriptor names no extents")
	}
	return d, nil
}

// parseExtent parses an extent line.
func parseExtent(line string) (extentLine, error) {
	var e extentLine
	q1 := strings.IndexByte(line, '"')
	head, tail := line, ""
	if q1 >= 0 {
		q2 := strings.IndexByte(line[q1+1:], '"')
		if q2 < 0 {
			return e, corruptf("extent file name has no closing quote")
		}
		head, e.file, tail = line[:q1], line[q1+1:q1+1+q2], strings.TrimSpace(line[q1+2+q2:])
		if strings.ContainsFunc(e.file, func(r rune) bool { return r < ' ' || r == 0x7f }) {
			return e, corruptf("extent file name %q has control characters", e.file)
		}
	}
	f := strings.Fields(head)
	if len(f) != 3 {
		return e, corruptf("extent line %.60q: want ACCESS SECTORS TYPE \"FILE\"", line)
	}
	e.access, e.kind = f[0], f[2]
	var err error
	if e.sectors, err = strconv.ParseInt(f[1], 10, 64); err != nil || e.sectors <= 0 || e.sectors > maxSectors {
		return e, corruptf("extent size %q sectors", f[1])
	}
	if tail != "" {
		if e.offset, err = strconv.ParseInt(tail, 10, 64); err != nil || e.offset < 0 || e.offset > maxSectors {
			return e, corruptf("extent offset %q", tail)
		}
	}
	switch e.kind {
	case kindSparse, kindFlat, kindVMFS:
		if e.file == "" {
			return e, corruptf("%s extent without a file name", e.kind)
		}
	case kindZero:
	default:
		return e, fmt.Errorf("vmdk: extent type %s: %w", e.kind, errUnsupported)
	}
	return e, nil
}

// encode writes the descriptor as qemu and VMware do.
func (d *descriptor) encode() string {
	var b strings.Builder
	fmt.Fprintf(&b, "# Disk DescriptorFile\nversion=%d\nCID=%s\nparentCID=%s\ncreateType=\"%s\"\n", max(d.version, 1), d.cid, d.parentCID, d.createType)
	if d.parentHint != "" {
		fmt.Fprintf(&b, "parentFileNameHint=\"%s\"\n", d.parentHint)
	}
	b.WriteString("\n# Extent description\n")
	for _, e := range d.extents {
		switch e.kind {
		case kindZero:
			fmt.Fprintf(&b, "%s %d %s\n", e.access, e.sectors, e.kind)
		case kindFlat, kindVMFS:
			fmt.Fprintf(&b, "%s %d %s \"%s\" %d\n", e.access, e.sectors, e.kind, e.file, e.offset)
		default:
			fmt.Fprintf(&b, "%s %d %s \"%s\"\n", e.access, e.sectors, e.kind, e.file)
		}
	}
	b.WriteString("\n# The Disk Data Base\n#DDB\n\n")
	for _, l := range d.ddb {
		b.WriteString(l + "\n")
	}
	return b.String()
}
