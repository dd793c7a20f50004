package handlers

import (
	"fmt"
	"strings"
	"testing"
)

// usersLevels is a power-levels content listing n users.
func usersLevels(n int) map[string]any {
	users := map[string]any{}
	for i := range n {
		users[fmt.Sprintf("@u%d:test", i)] = int64(10)
	}
	return map[string]any{"users": users, "redact": int64(50)}
}

// TestLevelsCache_KeyedByRoomEventAndStream: an entry is found by its
// room, event ID and stream position only, so a purge_room's new
// timeline (new stream positions) never sees the old one's levels.
func TestLevelsCache_KeyedByRoomEventAndStream(t *testing.T) {
	var c levelsCache
	pl := usersLevels(3)
	c.put("!a:test", "$pl", 7, pl, 100)
	if got, ok := c.get("!a:test", "$pl", 7); !ok || len(got["users"].(map[string]any)) != 3 {
		t.Fatalf("get after put: %v %v", got, ok)
	}
	for _, k := range []struct {
		room, id string
		stream   int64
	}{{"!b:test", "$pl", 7}, {"!a:test", "$other", 7}, {"!a:test", "$pl", 8}} {
		if _, ok := c.get(k.room, k.id, k.stream); ok {
			t.Errorf("found under %+v", k)
		}
	}
}

// TestLevelsCache_Bounded: the cache never holds more than maxLevelsBytes
// of contents, counted by their encoded size wherever it lies (a helper's
// review filled a bound on users alone with 36 MiB of "events" keys), and
// keeps no content too big for a quarter of it.
func TestLevelsCache_Bounded(t *testing.T) {
	var c levelsCache
	c.put("!r:test", "$huge", 1, usersLevels(1), maxLevelsBytes/4+1)
	if _, ok := c.get("!r:test", "$huge", 1); ok || c.size != 0 {
		t.Fatalf("a content above a quarter of the bound is kept (size %d)", c.size)
	}
	pl := usersLevels(3)
	for i := range 500 {
		c.put("!r:test", fmt.Sprint("$pl", i), int64(i), pl, 60<<10) // a content of 60 KiB
		if c.size > maxLevelsBytes {
			t.Fatalf("after %d puts the cache holds %d bytes, above %d", i+1, c.size, maxLevelsBytes)
		}
		if _, ok := c.get("!r:test", fmt.Sprint("$pl", i), int64(i)); !ok {
			t.Fatalf("the entry just put (%d) is not there", i)
		}
	}
	sum := 0
	for _, e := range c.entries {
		sum += e.size
	}
	if sum != c.size || len(c.entries) < 50 {
		t.Fatalf("%d entries, sizes summing to %d, counted %d", len(c.entries), sum, c.size)
	}
}

// TestLevelsCache_SmallEntriesBounded: the bound holds for what the
// entries cost, not only their contents. A power-levels content may
// encode in one byte ({}), and each entry keeps its room and event IDs
// (up to 255 bytes each) and a decoded map besides: counted at a byte
// each, the 4 MiB bound let the cache keep four million entries, gigabytes,
// for a room that paginates through many power-levels events.
func TestLevelsCache_SmallEntriesBounded(t *testing.T) {
	var c levelsCache
	room := "!" + strings.Repeat("r", 240) + ":test"
	pad := strings.Repeat("e", 230)
	for i := range 100_000 {
		c.put(room, fmt.Sprintf("$%s%08d", pad, i), int64(i), map[string]any{}, 1)
	}
	// What the entries hold besides their one-byte contents: their IDs,
	// which the cache copies, at least. Counted as such, not read off
	// the process's heap, which whatever else runs in it moves.
	held := 0
	for k := range c.entries {
		held += len(k.roomID) + len(k.eventID)
	}
	if held > maxLevelsBytes {
		t.Fatalf("%d entries of one-byte contents hold %d MiB of IDs; the cache is bounded at %d MiB",
			len(c.entries), held>>20, maxLevelsBytes>>20)
	}
}
