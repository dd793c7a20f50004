package commands

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"unicode/utf8"
)

// Command actions (CONTRACT.md section 3).
const (
	ActionPurgeHistory         = "purge_history"
	ActionPurgeRoom            = "purge_room"
	ActionShutdownAndPurgeRoom = "shutdown_and_purge_room"
	ActionBlockRoom            = "block_room"
	ActionForget               = "forget"
)

// Errors of log processing.
var (
	// ErrMalformed marks a log message that is not applied: undecodable, a
	// missing or mistyped field, a room mismatch. It is dead-lettered, never
	// retried.
	ErrMalformed = errors.New("malformed message")
	// ErrDuplicateCommand marks a command whose id is already a task.
	ErrDuplicateCommand = errors.New("command id is already a task")
)

// Command is an admin or homeserver command on a room's log.
type Command struct {
	ID          string
	Action      string
	RoomID      string
	Params      map[string]any
	RequestedBy string
	TS          int64
}

// ValidCommandID reports whether id is 1-64 of [A-Za-z0-9_-].
func ValidCommandID(id string) bool {
	if len(id) == 0 || len(id) > MaxCommandIDBytes {
		return false
	}
	for i := 0; i < len(id); i++ {
		c := id[i]
		if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '_' || c == '-') {
			return false
		}
	}
	return true
}

// CommandFromMap decodes the envelope of a command. An error wrapping
// ErrMalformed means the message cannot even become a task (no usable id,
// or a room mismatch); the caller dead-letters it. Parameter problems are
// not reported here but by Validate, so that the command still becomes a
// failed task under its id.
func CommandFromMap(m map[string]any, roomID string) (*Command, error) {
	c := &Command{}
	id, ok := m["id"].(string)
	action, _ := m["action"].(string)
	if !ok || !ValidCommandID(id) && !IsShutdownPurgeID(id, action) {
		return nil, fieldErr("id", "required: 1-64 of [A-Za-z0-9_-]")
	}
	c.ID = id
	if c.RoomID, ok = m["room_id"].(string); !ok || c.RoomID == "" {
		return nil, fieldErr("room_id", "required")
	}
	if c.RoomID != roomID {
		return nil, fieldErr("room_id", "%s does not match the subject's room %s", Quote(c.RoomID), Quote(roomID))
	}
	c.Action, _ = m["action"].(string)
	if p, present := m["params"]; present && p != nil {
		c.Params, _ = p.(map[string]any)
		if c.Params == nil {
			// Keep a marker so Validate can report it.
			c.Params = map[string]any{paramsNotMap: true}
		}
	}
	// A ts or requested_by of another type counts as absent (the log's
	// time, no requester). Refusing them now would change what a rebuild
	// makes of a log that earlier releases applied: a Python worker's
	// float ts, say, applied with its side effects.
	c.RequestedBy, _ = m["requested_by"].(string)
	c.TS, _ = AsInt(m["ts"])
	return c, nil
}

const paramsNotMap = "\x00params-not-a-map"

// ShutdownPurgeSuffix ends the id of the purge_room command that a
// shutdown publishes as its last step: "<delete id>-purge" (CONTRACT.md
// section 3).
const ShutdownPurgeSuffix = "-purge"

// IsShutdownPurgeID reports whether id can be the id of a shutdown's
// purge step: a purge_room whose id is a valid command id followed by
// ShutdownPurgeSuffix. Since a command id may be 64 bytes long, the
// purge step's may be 70; the projection accepts one that long only
// when its shutdown task exists.
func IsShutdownPurgeID(id, action string) bool {
	owner, ok := strings.CutSuffix(id, ShutdownPurgeSuffix)
	return ok && action == ActionPurgeRoom && ValidCommandID(owner)
}

// Validate checks the action and its parameters. The returned error's text
// becomes the failed task's error.
func (c *Command) Validate() error {
	if _, bad := c.Params[paramsNotMap]; bad {
		return errors.New("params must be a map")
	}
	switch c.Action {
	case ActionPurgeHistory:
		tok, ok := c.Params["token"].(string)
		if v := c.Params["token"]; v != nil && !ok {
			return errors.New("purge_history: params.token must be a string (t<depth>-<stream>)")
		}
		if !ok {
			return errors.New("purge_history: params.token is required (t<depth>-<stream>)")
		}
		rt, err := ParseRoomToken(tok)
		if err != nil || !rt.IsTopological {
			return fmt.Errorf("purge_history: params.token %s is not a t<depth>-<stream> token", Quote(tok))
		}
		return optBools(c.Params, "delete_local_events")
	case ActionPurgeRoom:
		return optBools(c.Params, "force")
	case ActionShutdownAndPurgeRoom:
		if err := optBools(c.Params, "block", "purge", "force_purge"); err != nil {
			return err
		}
		for _, k := range []string{"new_room_user_id", "new_room_name", "message"} {
			if v, ok := c.Params[k]; ok && v != nil {
				if _, ok := v.(string); !ok {
					return fmt.Errorf("%s: params.%s must be a string", c.Action, k)
				}
			}
		}
		if u, _ := c.Params["new_room_user_id"].(string); u != "" && !ValidUserID(u) {
			return fmt.Errorf("%s: params.new_room_user_id %s is not a user ID", c.Action, Quote(u))
		}
		return nil
	case ActionBlockRoom:
		if _, ok := c.Params["block"].(bool); !ok {
			return errors.New("block_room: params.block is required and must be a boolean")
		}
		return nil
	case ActionForget:
		u, ok := c.Params["user_id"].(string)
		if !ok || !ValidUserID(u) {
			return errors.New("forget: params.user_id is required and must be a user ID")
		}
		return nil
	case "":
		return errors.New("action is required")
	default:
		return fmt.Errorf("unknown action %s", Quote(c.Action))
	}
}

func optBools(p map[string]any, keys ...string) error {
	for _, k := range keys {
		if v, ok := p[k]; ok && v != nil {
			if _, ok := v.(bool); !ok {
				return fmt.Errorf("params.%s must be a boolean", k)
			}
		}
	}
	return nil
}

// Bool returns params[key] as a bool, def when absent.
func (c *Command) Bool(key string, def bool) bool {
	if b, ok := c.Params[key].(bool); ok {
		return b
	}
	return def
}

// String returns params[key] as a string ("" when absent).
func (c *Command) String(key string) string {
	s, _ := c.Params[key].(string)
	return s
}

// MaxQuoted bounds the bytes of a value that Quote quotes.
const MaxQuoted = 256

// Quote is %q of s, cut to its first MaxQuoted bytes (on a rune
// boundary, then "…") first: errors that name what a log message
// carried become dead-letter reasons and failed tasks' errors, which are
// stored, logged and sent in status replies. Quoted whole, a value of a
// few MiB made a text four times its size (%q writes a control byte as
// \x01), past what a reply may carry.
func Quote(s string) string {
	if len(s) <= MaxQuoted {
		return strconv.Quote(s)
	}
	cut := MaxQuoted
	for cut > 0 && !utf8.RuneStart(s[cut]) {
		cut--
	}
	return strconv.Quote(s[:cut]) + "…"
}
