package commands

import "testing"

// TestLegalRoomID follows Synapse's RoomID.is_valid and
// parse_and_validate_server_name (its RoomIDTestCase and
// ServerNameTestCase cases among them), within ValidRoomID's bounds.
func TestLegalRoomID(t *testing.T) {
	hash := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" // 43 characters
	for id, want := range map[string]bool{
		"!abc:example.com":              true,
		"!abc:example.com:8448":         true,
		"!abc:localhost":                true,
		"!abc:1.2.3.4":                  true,
		"!abc:1.2.3.4:1234":             true,
		"!abc:[::1]":                    true,
		"!abc:[::1]:8448":               true,
		"!abc:a-b.c-d":                  true,
		"!" + hash:                      true,
		"!" + hash[:42] + "_":           true,
		"!something:invalid$_chars.com": false,
		"!wronglength":                  false,
		"!" + hash + "A":                false,
		"!" + hash[:42] + "+":           false,
		"!abc:":                         false,
		"!abc:example.com:":             false,
		"!abc:example.com:80a":          false,
		"!abc:ex..ample":                false,
		"!abc:example.":                 false,
		"!abc:[::1":                     false,
		"!abc:[1.2.3.4]":                false,
		"!abc:[]":                       false,
		"!abc:exa mple":                 false,
		"abc:example.com":               false,
		"!:example.com":                 false, // ValidRoomID's empty localpart
	} {
		if got := LegalRoomID(id); got != want {
			t.Errorf("LegalRoomID(%q) = %v, want %v", id, got, want)
		}
	}
}
