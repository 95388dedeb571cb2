package blockdevtest

import "errors"

// ErrInjected is returned by a Faulty device's operation that a Rule
// failed, unless the Rule names another error.
var ErrInjected = errors.New("blockdevtest: injected fault")
