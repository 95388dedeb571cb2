package blockdev

// Caps are the optional capabilities a decorator gives the Device it
// returns (see WithCaps). A nil field is a capability the result lacks.
type Caps struct {
	Trimmer    Trimmer
	ZeroWriter ZeroWriter
	Extenter   Extenter
	// Describer gives the result's Info; nil means the Info of the base
	// Device (InfoOf).
	Describer Describer
}

// WithCaps returns a Device that has base's Device methods, Info, and
// exactly the non-nil capabilities in c: a type assertion on the result
// finds Trimmer, ZeroWriter or Extenter only when c has it, whatever
// base's own type implements. Decorators use it to expose a capability
// only when the device they wrap has it:
//
//	c := blockdev.Caps{}
//	if _, ok := inner.(blockdev.Trimmer); ok {
//		c.Trimmer = d // d's Trim forwards to inner
//	}
//	return blockdev.WithCaps(d, c)
func WithCaps(base Device, c Caps) Device {
	b := capsBase{Device: base, describer: c.Describer}
	t, z, e := c.Trimmer, c.ZeroWriter, c.Extenter
	switch {
	case t != nil && z != nil && e != nil:
		return struct {
			capsBase
			Trimmer
			ZeroWriter
			Extenter
		}{b, t, z, e}
	case t != nil && z != nil:
		return struct {
			capsBase
			Trimmer
			ZeroWriter
		}{b, t, z}
	case t != nil && e != nil:
		return struct {
			capsBase
			Trimmer
			Extenter
		}{b, t, e}
	case z != nil && e != nil:
		return struct {
			capsBase
			ZeroWriter
			Extenter
		}{b, z, e}
	case t != nil:
		return struct {
			capsBase
			Trimmer
		}{b, t}
	case z != nil:
		return struct {
			capsBase
			ZeroWriter
		}{b, z}
	case e != nil:
		return struct {
			capsBase
			Extenter
		}{b, e}
	}
	return b
}

// capsBase carries the Device methods of a WithCaps result, and its Info.
type capsBase struct {
	Device
	describer Describer
}

// Info returns the Describer's Info, or the base Device's.
func (b capsBase) Info() Info {
	if b.describer != nil {
		return b.describer.Info()
	}
	return InfoOf(b.Device)
}
