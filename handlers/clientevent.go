package handlers

import (
	"bytes"
	"encoding/binary"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// eventOpts say what to add to one client event.
type eventOpts struct {
	membership string // unsigned.membership (MSC4115); "" leaves it out
	bundle     bool   // bundled aggregations in unsigned["m.relations"]
	noThread   bool   // bundle without m.thread (a thread's latest event)
	// because: the event is the redaction shown in another's
	// redacted_because: pruned if it is redacted itself, as Synapse's
	// get_events gives it, but without a redacted_because of its own
	// (Synapse embeds it without recursing), so a chain of redactions of
	// redactions costs one level, not one per link.
	because bool
}

// clientEncoder appends events in Synapse's client format (SYNAPSE.md
// 1.5) to a buffer of concatenated MessagePack maps.
type clientEncoder struct {
	rc  *readContext
	buf bytes.Buffer
	enc *msgpack.Encoder
	n   int
}

// prevState is the state event a state event replaced.
type prevState struct {
	eventID string
	sender  string
	content []byte
}

func (c *clientEncoder) init() *msgpack.Encoder {
	if c.enc == nil {
		c.enc = msgpack.NewEncoder(&c.buf)
	}
	return c.enc
}

// str writes s as a MessagePack string, in the shortest format, as
// msgpack's EncodeString does: straight into the buffer, where the
// encoder's writes through its interfaces took two thirds of the time of
// encoding a page's events.
func (c *clientEncoder) str(s string) {
	switch n := len(s); {
	case n < 32:
		c.buf.WriteByte(0xa0 | byte(n))
	case n < 1<<8:
		c.buf.Write([]byte{0xd9, byte(n)})
	case n < 1<<16:
		c.buf.Write([]byte{0xda, byte(n >> 8), byte(n)})
	default:
		c.buf.Write([]byte{0xdb, byte(n >> 24), byte(n >> 16), byte(n >> 8), byte(n)})
	}
	c.buf.WriteString(s)
}

// event writes r as a client event.
func (c *clientEncoder) event(r *projections.Row, opts eventOpts) error {
	e := c.init()
	rc := c.rc
	age := rc.now - r.AgeTS
	content := r.Content
	redaction, err := rc.redaction(r)
	if err != nil {
		return err
	}
	redacted := redaction != nil
	if redacted {
		if content, err = c.redacted(r.Type, r.Content); err != nil {
			return err
		}
	}
	if rc.fed != nil {
		rc.fed.note(r, redacted)
	}
	if opts.because {
		// Shown pruned if it is redacted itself, but without its own
		// redacted_because: one level, not one a link of a chain.
		redaction = nil
	}
	var prev *prevState
	if r.IsState() {
		var err error
		if prev, err = c.prev(r); err != nil {
			return err
		}
	}
	var relations []byte
	if opts.bundle {
		var err error
		if relations, err = c.rc.bundle(r, !opts.noThread, redacted); err != nil {
			return err
		}
	}
	// A redacted event loses its top-level redacts; a redaction's target,
	// read where the room version keeps it (EventBase.redacts), is copied
	// to the other place, as Synapse's serialize_event does: into content
	// before v11, to the top level from v11 on. A redacted redaction
	// keeps a target only in v11, in content.redacts.
	redacts := r.Redacts
	if redacted && !commands.KeepsTopLevelRedacts(rc.version()) {
		redacts = ""
	}
	inContent := "" // a redacts to set in content as it is written
	if r.Type == typeRedaction {
		if commands.RedactsInContent(rc.version()) {
			if target := contentRedacts(content); target != "" {
				redacts = target
			}
		} else {
			inContent = redacts
		}
	}

	// The event's other top-level keys, which the client format keeps;
	// redaction keeps only a legacy membership, before v11.
	extra, extraN := r.Extra, r.ExtraN
	if redacted && extraN > 0 {
		extra, extraN = nil, 0
		if commands.KeepsTopLevelMembership(rc.version()) {
			if pair, ok := pairOf(r.Extra, r.ExtraN, "membership"); ok {
				extra, extraN = pair, 1
			}
		}
	}

	fields := 9 + extraN // content event_id origin_server_ts room_id sender type unsigned user_id age, the extra keys
	if r.IsState() {
		fields++
	}
	if redacts != "" {
		fields++
	}
	if prev != nil {
		fields += 2 // prev_content and replaces_state copied to the top level
	}
	if redaction != nil {
		fields++ // redacted_because copied to the top level
	}
	if err := e.EncodeMapLen(fields); err != nil {
		return err
	}
	str := func(k, v string) {
		c.str(k)
		c.str(v)
	}
	c.str("content")
	if inContent == "" {
		c.buf.Write(content)
	} else if err := c.contentWithRedacts(content, inContent); err != nil {
		return err
	}
	str("event_id", r.EventID)
	c.str("origin_server_ts")
	_ = e.EncodeInt(r.OriginServerTS)
	str("room_id", rc.roomID)
	str("sender", r.Sender)
	str("type", r.Type)
	if r.IsState() {
		str("state_key", r.StateKey)
	}
	if redacts != "" {
		str("redacts", redacts)
	}
	str("user_id", r.Sender)
	c.str("age")
	_ = e.EncodeInt(age)
	if prev != nil {
		c.str("prev_content")
		c.buf.Write(prev.content)
		str("replaces_state", prev.eventID)
	}
	if redaction != nil {
		c.str("redacted_because")
		if err := c.event(redaction, eventOpts{because: true}); err != nil {
			return err
		}
	}
	c.buf.Write(extra)

	// unsigned: age, prev_* for state events, membership, redaction,
	// relations. What else the homeserver published in unsigned is not
	// shown: Synapse keeps none of it (its PersistedUnsignedFields has
	// no other field).
	un := 1
	if prev != nil {
		un += 3
	}
	if opts.membership != "" {
		un++
	}
	if redaction != nil {
		un += 2
	}
	// Synapse's admin metadata (include_admin_metadata, for an admin's
	// read): a soft-failed event says so.
	softFailed := rc.req.Admin && r.SoftFailed()
	if softFailed {
		un++
	}
	if relations != nil {
		un++
	}
	c.str("unsigned")
	_ = e.EncodeMapLen(un)
	c.str("age")
	_ = e.EncodeInt(age)
	if prev != nil {
		c.str("prev_content")
		c.buf.Write(prev.content)
		str("prev_sender", prev.sender)
		str("replaces_state", prev.eventID)
	}
	if opts.membership != "" {
		str("membership", opts.membership)
	}
	if redaction != nil {
		str("redacted_by", redaction.EventID)
		c.str("redacted_because")
		if err := c.event(redaction, eventOpts{because: true}); err != nil {
			return err
		}
	}
	if softFailed {
		c.str("io.element.synapse.soft_failed")
		_ = e.EncodeBool(true)
	}
	if relations != nil {
		c.str("m.relations")
		c.buf.Write(relations)
	}
	return nil
}

// prev finds the state event r replaced, for prev_content.
func (c *clientEncoder) prev(r *projections.Row) (*prevState, error) {
	st, ok := c.rc.v.StateBefore(r.Type, r.StateKey, r.Depth, r.Stream)
	if !ok {
		return nil, nil
	}
	row, err := c.rc.v.StateEvent(st)
	if err != nil || row == nil {
		return nil, err
	}
	content := row.Content
	redaction, err := c.rc.redaction(row)
	if err != nil {
		return nil, err
	}
	if redaction != nil {
		if content, err = c.redacted(row.Type, row.Content); err != nil {
			return nil, err
		}
	}
	return &prevState{eventID: row.EventID, sender: row.Sender, content: content}, nil
}

// redacted prunes stored content with the room version's redaction rules.
func (c *clientEncoder) redacted(typ string, raw []byte) ([]byte, error) {
	content, err := decodeContent(raw)
	if err != nil {
		return nil, err
	}
	return encodeContent(commands.RedactContent(c.rc.version(), typ, content))
}

// contentWithRedacts writes stored content with content.redacts set to
// target. Content that has it already is written as it is, content
// without it gets the key appended after its own, with no decoding (a
// page of redactions showed them twice each, in redacted_because, and
// decoded every one); only content whose content.redacts names another
// event, or is not a string, is decoded and encoded again.
func (c *clientEncoder) contentWithRedacts(raw []byte, target string) error {
	n, head, ok := mapHeader(raw)
	if ok {
		switch v, found := stringField(raw, "redacts"); {
		case found && v == target:
			c.buf.Write(raw)
			return nil
		case !found:
			if err := c.init().EncodeMapLen(n + 1); err != nil {
				return err
			}
			c.buf.Write(raw[head:])
			c.str("redacts")
			c.str(target)
			return nil
		}
	}
	content := contentOf(raw)
	if content == nil {
		content = map[string]any{}
	}
	content["redacts"] = target
	b, err := encodeContent(content)
	c.buf.Write(b)
	return err
}

// stringField reads one key of a MessagePack map, skipping the values of
// the others: its value if it is a string, and whether the key is there
// (a value that is not a string reads as ""). A map that does not decode
// reports the key there, so that the caller takes its slow path.
func stringField(raw []byte, key string) (string, bool) {
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return "", true
	}
	for range n {
		k, err := dec.DecodeString()
		if err != nil {
			return "", true
		}
		if k != key {
			if dec.Skip() != nil {
				return "", true
			}
			continue
		}
		v, _ := dec.DecodeInterface()
		s, _ := v.(string)
		return s, true
	}
	return "", false
}

// pairOf finds key among n MessagePack map pairs and returns that pair's
// bytes.
func pairOf(pairs []byte, n int, key string) ([]byte, bool) {
	rd := bytes.NewReader(pairs)
	dec := msgpack.NewDecoder(rd)
	for range n {
		start := len(pairs) - rd.Len()
		k, err := dec.DecodeString()
		if err != nil || dec.Skip() != nil {
			return nil, false
		}
		if k == key {
			return pairs[start : len(pairs)-rd.Len()], true
		}
	}
	return nil, false
}

// mapHeader reads the header of a MessagePack map: its length and the
// header's size.
func mapHeader(b []byte) (n, size int, ok bool) {
	switch {
	case len(b) >= 1 && b[0]&0xf0 == 0x80:
		return int(b[0] & 0x0f), 1, true
	case len(b) >= 3 && b[0] == 0xde:
		return int(binary.BigEndian.Uint16(b[1:])), 3, true
	case len(b) >= 5 && b[0] == 0xdf:
		return int(binary.BigEndian.Uint32(b[1:])), 5, true
	}
	return 0, 0, false
}

// decodeContent decodes stored content.
func decodeContent(raw []byte) (map[string]any, error) {
	var content map[string]any
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	dec.UseLooseInterfaceDecoding(true)
	return content, dec.Decode(&content)
}

// encodeContent encodes content as it is stored, its keys sorted.
func encodeContent(content map[string]any) ([]byte, error) {
	var out bytes.Buffer
	enc := msgpack.NewEncoder(&out)
	enc.SetSortMapKeys(true)
	if err := enc.Encode(content); err != nil {
		return nil, err
	}
	return out.Bytes(), nil
}

// contentRedacts reads content.redacts from stored content.
func contentRedacts(raw []byte) string {
	s, _ := stringField(raw, "redacts")
	return s
}

// contentOf decodes stored content (nil if it is not a map).
func contentOf(raw []byte) map[string]any {
	content, err := decodeContent(raw)
	if err != nil {
		return nil
	}
	return content
}
