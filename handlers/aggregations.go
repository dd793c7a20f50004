package handlers

import (
	"bytes"

	"github.com/vmihailenco/msgpack/v5"

	"github.com/scrollback/scrollback/commands"
	"github.com/scrollback/scrollback/projections"
)

// bundle computes the bundled aggregations of r (SYNAPSE.md 4) from the
// relation indexes, and returns them encoded as the MessagePack map that
// goes under unsigned["m.relations"], or nil when there are none.
//
// Cost: the m.reference and m.replace entries of the event (each listed
// whole in the answer), and for a thread a count, one count per ignored
// user and the latest reply: never a scan of the room.
//
// A redacted event keeps its thread summary and references, but no edit
// (Synapse's get_bundled_aggregations: edits "but not for redacted
// events"); its own relation is gone with its content, so whatever it
// related to, it is bundled as an event without one.
func (rc *readContext) bundle(r *projections.Row, withThread, redacted bool) ([]byte, error) {
	relType := r.RelType
	if redacted {
		relType = ""
	}
	if r.IsState() || relType == commands.RelAnnotation || relType == commands.RelReplace {
		return nil, nil
	}
	kinds := rc.v.Related(r) // the kinds to look up
	if kinds == 0 {
		return nil, nil
	}
	related := relType != ""
	if !related && !redacted {
		// commands.RelationOf leaves out the relations that Synapse's
		// relation_from_event takes but nothing aggregates (an empty
		// rel_type or event_id, or one past 255 bytes): the event still
		// has one, so it starts no thread, and an edit gets no bundle.
		if relType, related = relationTypeOf(r.Content); relType == commands.RelAnnotation || relType == commands.RelReplace {
			return nil, nil
		}
	}
	ignored := rc.reader.Ignored
	var refs []string
	if kinds&projections.RelatedReference != 0 {
		rc.v.Relations(r.EventID, commands.RelReference, false, func(id, sender string) bool {
			if !ignored[sender] {
				refs = append(refs, id)
			}
			return true
		})
	}
	var edit *projections.Row
	if kinds&projections.RelatedReplace != 0 && !redacted {
		var err error
		if edit, err = rc.latestEdit(r); err != nil {
			return nil, err
		}
	}
	var latest *projections.Row
	var count int64
	participated := false
	var err error
	if withThread && !related && kinds&projections.RelatedThread != 0 {
		count = rc.v.RelationCount(r.EventID, commands.RelThread, "")
		for u := range ignored {
			count -= rc.v.RelationCount(r.EventID, commands.RelThread, u)
		}
		if count > 0 {
			var latestID string
			rc.v.Relations(r.EventID, commands.RelThread, true, func(id, sender string) bool {
				if ignored[sender] {
					return true
				}
				latestID = id
				return false
			})
			if latest, err = rc.v.Event(latestID); err != nil {
				return nil, err
			}
			user := rc.req.UserID
			participated = user != "" && (r.Sender == user || rc.v.RelationCount(r.EventID, commands.RelThread, user) > 0)
		}
	}
	n := 0
	if len(refs) > 0 {
		n++
	}
	if edit != nil {
		n++
	}
	if latest != nil {
		n++
	}
	if n == 0 {
		return nil, nil
	}
	c := &clientEncoder{rc: rc}
	e := c.init()
	_ = e.EncodeMapLen(n)
	if len(refs) > 0 {
		_ = e.EncodeString(commands.RelReference)
		_ = e.EncodeMapLen(1)
		_ = e.EncodeString("chunk")
		_ = e.EncodeArrayLen(len(refs))
		for _, id := range refs {
			_ = e.EncodeMapLen(1)
			_ = e.EncodeString("event_id")
			_ = e.EncodeString(id)
		}
	}
	if edit != nil {
		_ = e.EncodeString(commands.RelReplace)
		if err := c.event(edit, eventOpts{}); err != nil {
			return nil, err
		}
	}
	if latest != nil {
		_ = e.EncodeString(commands.RelThread)
		_ = e.EncodeMapLen(3)
		_ = e.EncodeString("latest_event")
		if err := c.event(latest, eventOpts{bundle: true, noThread: true}); err != nil {
			return nil, err
		}
		_ = e.EncodeString("count")
		_ = e.EncodeInt(count)
		_ = e.EncodeString("current_user_participated")
		_ = e.EncodeBool(participated)
	}
	return c.buf.Bytes(), nil
}

// latestEdit is the m.replace to show: among edits with the original's
// sender and type, the latest by origin_server_ts, then event ID. Any
// type of event has one (Synapse's get_applicable_edits has not required
// m.room.message since 1.100, #15295).
func (rc *readContext) latestEdit(r *projections.Row) (*projections.Row, error) {
	var best *projections.Row
	var err error
	rc.v.Relations(r.EventID, commands.RelReplace, false, func(id, sender string) bool {
		if sender != r.Sender {
			return true
		}
		var e *projections.Row
		if e, err = rc.v.Event(id); err != nil {
			return false
		}
		if e == nil || e.Type != r.Type {
			return true
		}
		if best == nil || e.OriginServerTS > best.OriginServerTS || e.OriginServerTS == best.OriginServerTS && e.EventID > best.EventID {
			best = e
		}
		return true
	})
	return best, err
}

// relationTypeOf is Synapse's relation_from_event on stored content:
// content["m.relates_to"] is a relation when it is a non-empty map whose
// rel_type and event_id are strings, whatever they hold. It reads the
// MessagePack in place, skipping the other keys' values.
func relationTypeOf(raw []byte) (string, bool) {
	dec := msgpack.NewDecoder(bytes.NewReader(raw))
	n, err := dec.DecodeMapLen()
	if err != nil {
		return "", false
	}
	for range n {
		k, err := dec.DecodeString()
		if err != nil {
			return "", false
		}
		if k != "m.relates_to" {
			if dec.Skip() != nil {
				return "", false
			}
			continue
		}
		m, err := dec.DecodeMapLen()
		if err != nil || m <= 0 {
			return "", false
		}
		var relType string
		var hasType, hasID bool
		for range m {
			k, err := dec.DecodeString()
			if err != nil {
				return "", false
			}
			if k != "rel_type" && k != "event_id" {
				if dec.Skip() != nil {
					return "", false
				}
				continue
			}
			v, err := dec.DecodeInterface()
			if err != nil {
				return "", false
			}
			s, isStr := v.(string)
			if k == "rel_type" {
				relType, hasType = s, isStr
			} else {
				hasID = isStr
			}
		}
		if !hasType || !hasID {
			return "", false
		}
		return relType, true
	}
	return "", false
}
