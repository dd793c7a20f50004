package commands

import "testing"

// TestLegalRoomID_PythonIntPort (found by a review helper, checked with
// Python's int()): Synapse's parse_server_name reads a
// server name's port with Python's int(), which takes a sign, surrounding
// whitespace, underscores between digits and any Unicode decimal digits;
// ROOM_ID_PATTERN_DOMAINLESS ends with "$", which also matches before a
// final newline. RoomID.is_valid is true for all of these, so the admin
// room APIs must not answer "<id> is not a legal room ID".
func TestLegalRoomID_PythonIntPort(t *testing.T) {
	hash := "AAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAAA" // 43 characters
	for id, want := range map[string]bool{
		"!abc:example.com:+8448":        true,
		"!abc:example.com:-1":           true,
		"!abc:example.com: 8448 ":       true,
		"!abc:example.com:84_48":        true,
		"!abc:example.com:\u0668\u0660": true, // Arabic-Indic 80
		"!" + hash + "\n":               true,
		"!abc:example.com:84__48":       false,
		"!abc:example.com:_8448":        false,
		"!abc:example.com:8448_":        false,
		"!abc:example.com:+":            false,
		"!abc:example.com:+-1":          false,
		"!abc:example.com:+ 1":          false,
		"!abc:example.com: ":            false,
		"!abc:example.com:\x1c1":        false,
		"!" + hash + "\n\n":             false,
		"!" + hash + " ":                false,
	} {
		if got := LegalRoomID(id); got != want {
			t.Errorf("LegalRoomID(%q) = %v, want %v", id, got, want)
		}
	}
}
