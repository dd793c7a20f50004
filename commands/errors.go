package commands

import (
	"errors"
	"fmt"
)

// Matrix error codes used by the service.
const (
	CodeForbidden     = "M_FORBIDDEN"
	CodeNotFound      = "M_NOT_FOUND"
	CodeInvalidParam  = "M_INVALID_PARAM"
	CodeBadJSON       = "M_BAD_JSON"
	CodeNotJSON       = "M_NOT_JSON"
	CodeMissingParam  = "M_MISSING_PARAM"
	CodeMissingToken  = "M_MISSING_TOKEN"
	CodeUnknownToken  = "M_UNKNOWN_TOKEN"
	CodeUnknown       = "M_UNKNOWN"
	CodeUnrecognized  = "M_UNRECOGNIZED"
	CodeLimitExceeded = "M_TOO_LARGE"
	CodeRateLimited   = "M_LIMIT_EXCEEDED"
)

// Error is the one user-visible error type of scrollback: an HTTP status, a
// Matrix errcode and the exact text Synapse would send. Every layer that
// answers a request (the NATS micro service, the HTTP bridge) maps it to
// its wire form in one place; any other error is internal and is answered
// with a generic 500.
type Error struct {
	Status  int    // HTTP status, also used as Nats-Service-Error-Code
	Code    string // Matrix errcode, e.g. M_FORBIDDEN
	Message string // human-readable text, Synapse's where Synapse has one
}

func (e *Error) Error() string { return fmt.Sprintf("%d %s: %s", e.Status, e.Code, e.Message) }

// Is makes errors.Is match on status and code, so that callers can test
// against the sentinel values below without comparing texts.
func (e *Error) Is(target error) bool {
	t, ok := target.(*Error)
	if !ok {
		return false
	}
	return (t.Status == 0 || t.Status == e.Status) && (t.Code == "" || t.Code == e.Code) && (t.Message == "" || t.Message == e.Message)
}

// Errorf builds an *Error.
func Errorf(status int, code, format string, args ...any) *Error {
	return &Error{Status: status, Code: code, Message: fmt.Sprintf(format, args...)}
}

// Sentinels, matched with errors.Is on status and code only.
var (
	// ErrBadRequest matches any 400.
	ErrBadRequest = &Error{Status: 400}
	// ErrForbidden matches 403 M_FORBIDDEN.
	ErrForbidden = &Error{Status: 403, Code: CodeForbidden}
	// ErrNotFound matches 404 M_NOT_FOUND.
	ErrNotFound = &Error{Status: 404, Code: CodeNotFound}
	// ErrTimeout matches 504: a bounded wait ran out.
	ErrTimeout = &Error{Status: 504}
	// ErrUnavailable matches 503: a worker the service depends on did not answer.
	ErrUnavailable = &Error{Status: 503}
)

// AsError returns err as an *Error, or a generic 500 M_UNKNOWN for anything
// else (internal errors never leak their text to callers).
func AsError(err error) *Error {
	var e *Error
	if errors.As(err, &e) {
		return e
	}
	return &Error{Status: 500, Code: CodeUnknown, Message: "Internal server error"}
}
