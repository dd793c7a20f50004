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

// Permissions returns what a role may publish and subscribe to. Every
// role may subscribe to _INBOX.> (replies to its requests and JetStream
// acks); answering requests is allowed by the response permission, only
// for requests it received.
func (s Subjects) Permissions(role string) *server.Permissions {
	inbox := "_INBOX.>"
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
		out = append(out, &server.User{Username: u.Name, Password: u.Password, Permissions: s.Permissions(u.Role)})
	}
	return out
}
