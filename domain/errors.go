package domain

import (
	"errors"
	"strings"
)

// Sentinel errors the adapters map to answers (HTTP status, exit code).
var (
	// ErrNotFound: no token with that id in the caller's organization.
	ErrNotFound = errors.New("not found")
	// ErrConflict: another command changed the token first; reload and retry.
	ErrConflict = errors.New("conflict")
	// ErrDeleted: the token is deleted and accepts no further command.
	ErrDeleted = errors.New("token is deleted")
)

// NotFoundError: the thing a field names does not exist (for this caller).
// errors.Is(err, ErrNotFound) holds for it.
type NotFoundError struct {
	Field string
	Rule  string
}

func (e *NotFoundError) Error() string        { return e.Field + ": " + e.Rule }
func (e *NotFoundError) Is(target error) bool { return target == ErrNotFound }

// FieldError names one field and the rule its value broke.
type FieldError struct {
	Field string `json:"field"`
	Rule  string `json:"rule"`
}

func (e FieldError) Error() string { return e.Field + ": " + e.Rule }

// ValidationError lists every rule a command broke, so a caller can fix them all
// in one go rather than one per round trip.
type ValidationError struct {
	Problems []FieldError
}

func (e *ValidationError) Error() string {
	parts := make([]string, len(e.Problems))
	for i, p := range e.Problems {
		parts[i] = p.Error()
	}
	return "invalid input: " + strings.Join(parts, "; ")
}

// Invalid builds a ValidationError for a single field.
func Invalid(field, rule string) error {
	return &ValidationError{Problems: []FieldError{{Field: field, Rule: rule}}}
}

// StateError is a command that is well-formed but not allowed in the token's
// current state (unassigning a workspace it is not assigned to, say).
type StateError struct {
	Field string
	Rule  string
}

func (e *StateError) Error() string { return e.Field + ": " + e.Rule }

// problems collects field errors while a command is validated.
type problems []FieldError

func (p *problems) add(field, rule string) { *p = append(*p, FieldError{field, rule}) }

func (p problems) err() error {
	if len(p) == 0 {
		return nil
	}
	return &ValidationError{Problems: p}
}
