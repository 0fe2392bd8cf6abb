package container

import (
	"fmt"
	"regexp"
	"sync"
)

// MaxIDLen bounds container and exec ids (Kata's runtime uses 64 hex chars).
const MaxIDLen = 128

// idRE is compiled on first use, not at package init (every container
// init, a re-exec of this binary, would pay for it).
var idRE = sync.OnceValue(func() *regexp.Regexp { return regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9_.-]*$`) })

// ValidateID checks that id is a safe single path component: it names a
// directory under the state root and a cgroup. field names the request
// field in the error ("container_id", "exec_id").
func ValidateID(field, id string) error {
	switch {
	case id == "":
		return fmt.Errorf("%s: must be set: %w", field, ErrInvalid)
	case len(id) > MaxIDLen:
		return fmt.Errorf("%s %.16q...: longer than %d bytes: %w", field, id, MaxIDLen, ErrInvalid)
	case !idRE().MatchString(id):
		return fmt.Errorf("%s %q: must be a single path component of [A-Za-z0-9_.-] starting with a letter or digit: %w", field, id, ErrInvalid)
	}
	return nil
}
