package handlers

import (
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
	if withThread && relType == "" && kinds&projections.RelatedThread != 0 {
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
