package engine

import (
	"fmt"
	"strings"
)

// How a Config, or a pool ID, is found invalid: every violation at once, by
// its field's API path.

// FieldViolation names one invalid field by its API path (for example
// "limits.max_connections") and says why.
type FieldViolation struct {
	Field  string
	Reason string
}

// ValidationError lists every invalid field of a Config at once.
// errors.Is(err, ErrInvalidConfig) is true for it.
type ValidationError struct {
	Violations []FieldViolation
}

func (e *ValidationError) Error() string {
	var b strings.Builder
	b.WriteString("invalid pool config: ")
	for i, v := range e.Violations {
		if i > 0 {
			b.WriteString("; ")
		}
		b.WriteString(v.Field)
		b.WriteString(": ")
		b.WriteString(v.Reason)
	}
	return b.String()
}

// Is reports whether target is ErrInvalidConfig.
func (e *ValidationError) Is(target error) bool { return target == ErrInvalidConfig }

// ValidatePoolID checks a pool ID: 1 to 63 characters of lowercase letters,
// digits and hyphens, starting with a letter and not ending with a hyphen
// (AIP-122).
func ValidatePoolID(id string) error {
	if !validPoolID(id) {
		return &ValidationError{Violations: []FieldViolation{{
			Field:  "name",
			Reason: fmt.Sprintf("pool id %q must be 1-63 lowercase letters, digits or hyphens, start with a letter and not end with a hyphen", id),
		}}}
	}
	return nil
}

// validPoolID reports whether id matches ^[a-z]([a-z0-9-]{0,61}[a-z0-9])?$,
// without a regexp: every lease open checks its pool's ID.
func validPoolID(id string) bool {
	if len(id) == 0 || len(id) > 63 || id[0] < 'a' || id[0] > 'z' || id[len(id)-1] == '-' {
		return false
	}
	for i := 1; i < len(id); i++ {
		c := id[i]
		if (c < 'a' || c > 'z') && (c < '0' || c > '9') && c != '-' {
			return false
		}
	}
	return true
}
