package bus

import (
	"github.com/nats-io/nats-server/v2/server"
)

// Roles of the embedded server's users (nats.auth in the config). Each
// gets what its part of the contract needs and nothing else.
const (
	// RoleHomeserver publishes room events and commands and answers
	// sb.hs.* requests.
	RoleHomeserver = "homeserver"
	// RoleFederation answers sb.backfill.
	RoleFederation = "federation"
	// RoleClient sends requests to the service (sb.api.*): the HTTP
	// bridge when it runs as its own process, and admin tools.
	RoleClient = "client"
)

// ServiceName is the micro service's name (CONTRACT.md 4).
const ServiceName = "scrollback"

// ServiceUser is the user scrollback itself connects as when the embedded
// server has users; it may do everything.
const ServiceUser = "scrollback"

// ValidRole reports whether role is one of the roles.
func ValidRole(role string) bool {
	return role == RoleHomeserver || role == RoleFederation || role == RoleClient
}

// User is one user of the embedded server.
type User struct {
	Name, Password, Role string
}

// UserInbox is the inbox prefix of a user of the embedded server: its
// clients connect with nats.CustomInboxPrefix(UserInbox(user)) (Connect
// does, for a URL with a user), and it may subscribe to that prefix's
// subjects alone. Were every user allowed _INBOX.>, any of them could
// read every reply on the bus: other users' pages, and the log itself on
// its way to the service's consumer, whose deliveries go to an inbox.
func UserInbox(user string) string { return InboxPrefix + user }

// Permissions returns what a role's user may publish and subscribe to.
// Each may subscribe to its own inbox (UserInbox: replies to its
// requests and JetStream acks); answering requests is allowed by the
// response permission, only for requests it received.
func (s Subjects) Permissions(role, user string) *server.Permissions {
	inbox := UserInbox(user) + ".>"
	var pub, sub []string
	respond := false
	switch role {
	case RoleHomeserver:
		pub = []string{s.Prefix + ".room.*." + "event", s.Prefix + ".room.*." + "cmd"}
		sub = []string{s.HS(">"), inbox}
		respond = true
	case RoleFederation:
		sub = []string{s.Backfill(), inbox}
		respond = true
	case RoleClient:
		// Nothing but the service's API, which refuses to reply on
		// system and its own subjects (Service.refused). Not sb.hs.*: a worker answers a request
		// on whatever reply subject it names, with the response
		// permission, so a client could publish anywhere through it;
		// nor micro's own $SRV.* endpoints, which answer the same way.
		pub = []string{s.Prefix + ".api.>"}
		sub = []string{inbox}
	default:
		sub = []string{inbox} // nothing else
	}
	p := &server.Permissions{
		Publish:   &server.SubjectPermission{Allow: pub},
		Subscribe: &server.SubjectPermission{Allow: sub},
	}
	if len(pub) == 0 {
		p.Publish = &server.SubjectPermission{Deny: []string{">"}}
	}
	if respond {
		p.Response = &server.ResponsePermission{MaxMsgs: 1}
	}
	return p
}

// serverUsers builds the embedded server's users: the configured ones with
// their roles, and the service's own user with every permission.
func serverUsers(s Subjects, users []User, servicePassword string) []*server.User {
	out := []*server.User{{Username: ServiceUser, Password: servicePassword}}
	for _, u := range users {
		out = append(out, &server.User{Username: u.Name, Password: u.Password, Permissions: s.Permissions(u.Role, u.Name)})
	}
	return out
}
