package projections

import (
	"bytes"
	"encoding/binary"
	"fmt"
	"strings"

	bolt "go.etcd.io/bbolt"
)

// The srvmembers index lists, by room and server, the users that have
// an m.room.member state entry in the room (putState), so that a question
// about one server's members (did our server have a user joined at that
// event?) reads its few users' state, not the membership of a room of
// thousands. An entry is never deleted but with its room number (a state
// entry is not either), and it is written once per user and room: a
// look-up on every member state event, a write on a user's first.

// serverMemberPrefix is room|len(server)|server.
func serverMemberPrefix(room uint64, server string) []byte {
	k := make([]byte, 0, 8+2+len(server)+64)
	k = binary.BigEndian.AppendUint64(k, room)
	k = binary.BigEndian.AppendUint16(k, uint16(len(server)))
	return append(k, server...)
}

// userServer is the server of a user ID (@local:server): what follows its
// first colon, as Synapse reads it (commands.IsLocalUser).
func userServer(userID string) (string, bool) {
	_, server, ok := strings.Cut(userID, ":")
	return server, ok && strings.HasPrefix(userID, "@")
}

// indexMember records that userID has a member state entry in the room.
func indexMember(tx *bolt.Tx, room uint64, userID string) error {
	server, ok := userServer(userID)
	if !ok {
		return nil // no user ID: no server's member
	}
	k := append(serverMemberPrefix(room, server), userID...)
	b := tx.Bucket(bByServer)
	if b.Get(k) != nil {
		return nil
	}
	// Not nil: bbolt gives a nil value back as nil within its
	// transaction, and the look-up above would put it again.
	return b.Put(k, []byte{})
}

// ServerMember reports whether some user of server has, in the state after
// the event at (depth, stream), a membership that ok accepts. It costs a
// seek for the server's users in the room, then a state seek per user
// until one passes: it does not read the other servers' members.
func (v *RoomView) ServerMember(server string, depth, stream int64, ok func(membership string) bool) bool {
	found := false
	v.serverUsers(server, func(user string) bool {
		e, at := v.StateAt("m.room.member", user, depth, stream)
		found = at && ok(e.Summary)
		return !found
	})
	return found
}

// LocalJoined reports whether a user of server is joined to the room now:
// whether the server is still in it (Synapse deletes a room's current
// state when its last local member leaves). Like ServerMember, it reads
// the server's users alone: a room the server has left, with thousands of
// members of other servers, costs a seek.
func (v *RoomView) LocalJoined(server string) bool {
	joined := false
	v.ServerMembers(server, func(_, membership string) bool {
		joined = membership == "join"
		return !joined
	})
	return joined
}

// ServerMembers calls fn with the current membership of each user of
// server that has one in the room (after its last purge_room), in user ID
// order, until fn returns false. It reads that server's users alone (the
// srvmembers index), not the room's whole membership.
func (v *RoomView) ServerMembers(server string, fn func(user, membership string) bool) {
	v.serverUsers(server, func(user string) bool {
		e, ok := v.CurrentState("m.room.member", user)
		return !ok || fn(user, e.Summary)
	})
}

// serverUsers calls fn with each user of server in the room's srvmembers
// index, in user ID order, until fn returns false.
func (v *RoomView) serverUsers(server string, fn func(user string) bool) {
	if v.room == 0 {
		return
	}
	prefix := serverMemberPrefix(v.room, server)
	c := v.bucket(bByServer).Cursor()
	for k, _ := c.Seek(prefix); k != nil && bytes.HasPrefix(k, prefix); k, _ = c.Next() {
		if !fn(string(k[len(prefix):])) {
			return
		}
	}
}

// metaServerMembers is the meta key of a file whose srvmembers index is
// complete: new files have it from the start, older ones once
// indexServerMembers is done.
var metaServerMembers = []byte("srvmembers")

// serverMembersBatch bounds the state entries indexServerMembers reads
// per transaction.
const serverMembersBatch = 20000

// indexServerMembers gives a file made before the srvmembers index its
// entries, from the state index, once (fillOnce; an entry put again
// changes nothing, so a crash in between starts over).
func (s *Store) indexServerMembers() error {
	return s.fillOnce(metaServerMembers, bState, serverMembersBatch, func(tx *bolt.Tx, k, _ []byte) error {
		room, typ, stateKey, ok := parseStateKey(k)
		if !ok {
			return fmt.Errorf("state: bad key %x", k)
		}
		if typ != "m.room.member" {
			return nil
		}
		return indexMember(tx, room, stateKey)
	})
}
