package handlers

import (
	"net/http/httptest"
	"testing"
)

// TestTokenOf_TwistedArgs: Synapse reads access_token from Twisted's
// request.args, where ';' separates pairs as '&' does and a name without
// '=' is no pair at all.
func TestTokenOf_TwistedArgs(t *testing.T) {
	r := httptest.NewRequest("GET", "/x?access_token=tok;dir=b", nil)
	if tok, missing := tokenOf(r); tok != "tok" || missing != "" {
		t.Errorf("access_token=tok;dir=b: tok=%q missing=%q, want tok", tok, missing)
	}
	r = httptest.NewRequest("GET", "/x?dir=b&access_token", nil)
	r.Header.Set("Authorization", "Bearer tok")
	if tok, missing := tokenOf(r); tok != "tok" || missing != "" {
		t.Errorf("header and a bare access_token: tok=%q missing=%q, want tok", tok, missing)
	}
	r = httptest.NewRequest("GET", "/x?access_token=a&access_token=b", nil)
	if tok, _ := tokenOf(r); tok != "a" {
		t.Errorf("repeated access_token: %q, want the first", tok)
	}
}
