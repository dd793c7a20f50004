package handlers

import (
	"context"
	"crypto/sha256"
	"errors"
	"net/http"
	"strings"
	"sync"
	"time"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// Identity is who made a request.
type Identity struct {
	UserID string
	Admin  bool
}

// Requester sends a request over the bus and returns the raw reply (an
// error reply comes back as *commands.Error).
type Requester interface {
	Request(ctx context.Context, subject string, req any) ([]byte, error)
}

// Auth checks access tokens: first the static tokens of the config and the
// generated admin token, then sb.hs.whoami (CONTRACT.md section 1).
//
// Static tokens are looked up by their SHA-256, not by the token itself:
// a map compares the bytes of a key whose hash matches, and the time that
// takes would tell how much of a guess is right; the digest of a guess
// says nothing about the token's bytes.
type Auth struct {
	Static   map[string]Identity
	Req      Requester
	Subjects bus.Subjects
	// Timeout bounds each request to the homeserver workers, whoami and
	// the bridge's ignored_users (homeserver.timeout; default 5 s). It
	// is set on the request's context: the HTTP request's own deadline
	// is longer, and a requester's timeout applies only to a context
	// without one.
	Timeout time.Duration

	hashOnce sync.Once
	byDigest map[[sha256.Size]byte]Identity
}

// static returns the identity of a static token.
func (a *Auth) static(tok string) (Identity, bool) {
	a.hashOnce.Do(func() {
		a.byDigest = make(map[[sha256.Size]byte]Identity, len(a.Static))
		for t, id := range a.Static {
			a.byDigest[sha256.Sum256([]byte(t))] = id
		}
	})
	id, ok := a.byDigest[sha256.Sum256([]byte(tok))]
	return id, ok
}

// tokenOf returns the request's access token, from one Authorization
// bearer header or else the access_token query parameter, as Synapse's
// get_access_token_from_request does; otherwise the 401 M_MISSING_TOKEN
// message: none, both at once, two headers, or a header that is not
// exactly "Bearer <token>" are refused with Synapse's texts. A token
// given empty ("Bearer ", "?access_token=") is returned as "", which no
// token matches (Synapse: M_UNKNOWN_TOKEN).
func tokenOf(r *http.Request) (tok, missing string) {
	headers := r.Header.Values("Authorization")
	query, inQuery := twistedQuery(r.URL.RawQuery)["access_token"] // request.args: ';' separates, "access_token" alone is no pair
	if len(headers) > 0 {
		switch parts := strings.Split(headers[0], " "); {
		case inQuery:
			return "", "Mixing Authorization headers and access_token query parameters."
		case len(headers) > 1:
			return "", "Too many Authorization headers."
		case len(parts) != 2 || parts[0] != "Bearer":
			return "", "Invalid Authorization header."
		default:
			tok = parts[1]
		}
		return tok, ""
	}
	if inQuery {
		return query[0], ""
	}
	return "", "Missing access token."
}

// askHomeserver sends a request to the homeserver workers (sb.hs.<name>),
// bounded by Timeout.
func (a *Auth) askHomeserver(ctx context.Context, name string, req map[string]any) ([]byte, error) {
	t := a.Timeout
	if t <= 0 {
		t = 5 * time.Second
	}
	ctx, cancel := context.WithTimeout(ctx, t)
	defer cancel()
	return a.Req.Request(ctx, a.Subjects.HS(name), req)
}

// Authenticate returns the requester's identity or a Matrix error: 401
// M_MISSING_TOKEN, 401 M_UNKNOWN_TOKEN, or 503 when no homeserver answers
// whoami for a token the config does not know.
func (a *Auth) Authenticate(ctx context.Context, r *http.Request) (Identity, error) {
	tok, missing := tokenOf(r)
	if missing != "" {
		return Identity{}, commands.Errorf(401, commands.CodeMissingToken, "%s", missing)
	}
	if tok == "" {
		return Identity{}, commands.Errorf(401, commands.CodeUnknownToken, "Unrecognised access token.")
	}
	if id, ok := a.static(tok); ok {
		return id, nil
	}
	if a.Req == nil {
		return Identity{}, commands.Errorf(401, commands.CodeUnknownToken, "Unrecognised access token.")
	}
	data, err := a.askHomeserver(ctx, "whoami", map[string]any{"access_token": tok})
	var apiErr *commands.Error
	switch {
	case errors.As(err, &apiErr):
		return Identity{}, commands.Errorf(401, commands.CodeUnknownToken, "Unrecognised access token.")
	case err != nil:
		return Identity{}, commands.Errorf(503, commands.CodeUnknown, "Cannot check the access token: no homeserver answers %s", a.Subjects.HS("whoami"))
	}
	m, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		return Identity{}, commands.Errorf(503, commands.CodeUnknown, "Cannot check the access token: bad whoami reply")
	}
	id := Identity{}
	id.UserID, _ = m["user_id"].(string)
	id.Admin, _ = m["admin"].(bool)
	if id.UserID == "" {
		return Identity{}, commands.Errorf(401, commands.CodeUnknownToken, "Unrecognised access token.")
	}
	return id, nil
}
