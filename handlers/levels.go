package handlers

import (
	"strings"
	"sync"
)

// levelsCache keeps decoded m.room.power_levels contents between reads,
// for the redaction checks across servers (readContext.levelsBefore). In
// a big room every such redaction needs the levels in the state before
// it, and decoding them was most of the read: 0.6 ms a page for 3,000
// users, decoded once a read. A power-levels event's content never
// changes under its ID (a redaction of it keeps every key a level check
// reads, and a purge removes it from the state the reads look it up in),
// so an entry never goes stale; the key carries the event's stream
// position too, which a purge_room's new timeline never reuses.
//
// The cache holds at most maxLevelsBytes of contents, counted by their
// stored (encoded) size plus their keys' strings and a fixed overhead an
// entry (levelsEntryOverhead): a content's size may lie in any of its
// keys (an "events" map, say), not only in its users. A decoded content takes a few
// times its encoded size. A content too big for a quarter of the bound is
// not kept (each read decodes it once, as before). When an entry does not
// fit, entries go in the map's order, which Go randomises: a random
// eviction, with no bookkeeping on reads.
type levelsCache struct {
	mu      sync.Mutex
	entries map[levelsKey]levelsEntry
	size    int
}

type levelsKey struct {
	roomID, eventID string
	stream          int64
}

type levelsEntry struct {
	content map[string]any // read-only once stored
	size    int            // its encoded size, its key's and levelsEntryOverhead
}

// maxLevelsBytes bounds the cache's contents, encoded: a few times that
// decoded (power levels listing 3,000 users take about 70 KB encoded).
const maxLevelsBytes = 4 << 20

// get returns the cached content of the power-levels event, if any.
func (c *levelsCache) get(roomID, eventID string, stream int64) (map[string]any, bool) {
	c.mu.Lock()
	defer c.mu.Unlock()
	e, ok := c.entries[levelsKey{roomID, eventID, stream}]
	return e.content, ok
}

// levelsEntryOverhead is what an entry costs besides its content's
// encoded size and its key's strings: the map slot, the key and entry
// structs, and the decoded map (an empty one included), roughly. A
// content may encode in one byte ({}): counted at that alone, the bound
// let the cache keep millions of entries, each holding up to 510 bytes
// of IDs.
const levelsEntryOverhead = 256

// put stores a decoded content of size encoded bytes, which no one may
// change afterwards. The key's strings are copied: a read's strings alias
// its transaction's memory.
func (c *levelsCache) put(roomID, eventID string, stream int64, content map[string]any, size int) {
	if size > maxLevelsBytes/4 {
		return
	}
	size += len(roomID) + len(eventID) + levelsEntryOverhead
	c.mu.Lock()
	defer c.mu.Unlock()
	key := levelsKey{strings.Clone(roomID), strings.Clone(eventID), stream}
	if _, ok := c.entries[key]; ok {
		return
	}
	for k, e := range c.entries {
		if c.size+size <= maxLevelsBytes {
			break
		}
		delete(c.entries, k)
		c.size -= e.size
	}
	if c.entries == nil {
		c.entries = map[levelsKey]levelsEntry{}
	}
	c.entries[key] = levelsEntry{content: content, size: size}
	c.size += size
}
