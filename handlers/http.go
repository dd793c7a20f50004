package handlers

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"math"
	"net/http"
	"net/url"
	"strconv"
	"strings"
	"sync/atomic"
	"time"
	"unicode/utf8"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/commands"
)

// Bounds of the HTTP bridge.
const (
	MaxBodyBytes   = 1 << 20
	MaxQueryBytes  = 64 << 10
	requestTimeout = 30 * time.Second
	// DefaultMaxInFlight bounds the API requests the bridge handles at
	// once; past it a request is answered 429 M_LIMIT_EXCEEDED at once
	// instead of holding a goroutine, its body and a NATS request.
	DefaultMaxInFlight = 1024
)

// Bridge is the HTTP bridge: Synapse's client and admin endpoints, each a
// thin translation to a request of CONTRACT.md section 4.
type Bridge struct {
	Req Requester
	// DeleteReq sends v1 room deletions, which wait for the shutdown
	// (default Req).
	DeleteReq Requester
	Subjects  bus.Subjects
	Auth      *Auth
	Logger    *slog.Logger
	// Healthy reports whether the service consumes the log and answers.
	Healthy func() bool
	// Metrics serves /metrics; Observe hears every request.
	Metrics http.Handler
	Observe func(endpoint string, d time.Duration, status int)
	// MaxInFlight bounds the API requests handled at once (default
	// DefaultMaxInFlight); /health and /metrics do not count, nor do v1
	// room deletions, which MaxDeleteV1 bounds.
	MaxInFlight int
	// MaxDeleteV1 bounds the v1 room deletions handled at once (default
	// DefaultMaxDeleteV1). Each waits until its deletion is over, up to
	// DeleteV1Timeout, and goes on after its client has gone: in the
	// slots of MaxInFlight, retried v1 calls on a room whose deletion
	// hangs would leave none to the reads.
	MaxDeleteV1 int

	slots, v1Slots chan struct{}
	// lastIgnoreWarn is when a failed ignore list was last logged
	// (UnixNano).
	lastIgnoreWarn atomic.Int64
}

// DefaultMaxDeleteV1 is Bridge.MaxDeleteV1's default: as many as the
// service lets wait detached from its workers (bus.DefaultMaxDetached).
const DefaultMaxDeleteV1 = bus.DefaultMaxDetached

// apiHandler is an HTTP handler that returns its error; serveAPI is the one
// place where errors become Matrix error responses.
type apiHandler func(ctx context.Context, r *http.Request, id Identity) (any, error)

// Handler returns the bridge's routes.
func (b *Bridge) Handler() http.Handler {
	if b.MaxInFlight <= 0 {
		b.MaxInFlight = DefaultMaxInFlight
	}
	b.slots = make(chan struct{}, b.MaxInFlight)
	if b.MaxDeleteV1 <= 0 {
		b.MaxDeleteV1 = DefaultMaxDeleteV1
	}
	b.v1Slots = make(chan struct{}, b.MaxDeleteV1)
	mux := http.NewServeMux()
	for _, v := range []string{"v3", "r0", "api/v1", "unstable"} { // Synapse's client_patterns(..., v1=True)
		mux.Handle("GET /_matrix/client/"+v+"/rooms/{roomId}/messages", b.serve("client_messages", false, b.clientMessages))
	}
	mux.Handle("GET /_synapse/admin/v1/rooms/{roomId}/messages", b.serve("admin_messages", true, b.adminMessages))
	mux.Handle("GET /_synapse/admin/v1/rooms/{roomId}/block", b.serve("get_block", true, b.getBlock))
	mux.Handle("PUT /_synapse/admin/v1/rooms/{roomId}/block", b.serve("put_block", true, b.putBlock))
	mux.Handle("POST /_synapse/admin/v1/purge_history/{roomId}", b.serve("purge_history", true, b.purgeHistory))
	mux.Handle("POST /_synapse/admin/v1/purge_history/{roomId}/{eventId}", b.serve("purge_history", true, b.purgeHistory))
	mux.Handle("GET /_synapse/admin/v1/purge_history_status/{purgeId}", b.serve("purge_status", true, b.purgeStatus))
	mux.Handle("DELETE /_synapse/admin/v1/rooms/{roomId}", b.serve("delete_room_v1", true, b.deleteRoom(true)))
	mux.Handle("DELETE /_synapse/admin/v2/rooms/{roomId}", b.serve("delete_room_v2", true, b.deleteRoom(false)))
	// .../rooms/{roomId}/delete_status and .../rooms/delete_status/{deleteId}
	// overlap as ServeMux patterns; one pattern serves both, and any other
	// path of that shape is no route at all (before the admin check, as
	// in Synapse, where no pattern matches it).
	deleteStatus := b.serve("delete_status", true, b.deleteStatus)
	mux.HandleFunc("GET /_synapse/admin/v2/rooms/{first}/{second}", func(w http.ResponseWriter, r *http.Request) {
		restoreEmptySegments(r)
		if !isDeleteStatusPath(r.PathValue("first"), r.PathValue("second")) {
			unrecognized(mux, w, r)
			return
		}
		deleteStatus.ServeHTTP(w, r)
	})
	mux.HandleFunc("GET /health", b.health)
	if b.Metrics != nil {
		mux.Handle("GET /metrics", b.Metrics)
	}
	mux.HandleFunc("/", func(w http.ResponseWriter, r *http.Request) { unrecognized(mux, w, r) })
	return withEmptySegments(mux)
}

// emptySegment stands for an empty path segment while a request is routed:
// Synapse's patterns take one ([^/]*: an empty room ID, an empty purge ID,
// a trailing slash as an empty event ID), a ServeMux wildcard matches
// none, and ServeMux answers a path with "//" with a redirect to the path
// without it. Its unescaped form is what a handler's PathValue would see;
// restoreEmptySegments makes it "" again.
const (
	emptySegment          = "%00"
	emptySegmentUnescaped = "\x00"
)

// withEmptySegments routes a path with empty segments ("//", or a
// trailing "/") with each of them replaced by emptySegment.
func withEmptySegments(mux *http.ServeMux) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if p := r.URL.EscapedPath(); len(p) > 1 && (strings.Contains(p, "//") || strings.HasSuffix(p, "/")) {
			segs := strings.Split(p[1:], "/")
			for i, s := range segs {
				if s == "" {
					segs[i] = emptySegment
				}
			}
			u := *r.URL
			u.RawPath = "/" + strings.Join(segs, "/")
			if path, err := url.PathUnescape(u.RawPath); err == nil {
				u.Path = path
				r = r.Clone(r.Context())
				r.URL = &u
			}
		}
		mux.ServeHTTP(w, r)
	})
}

// routeWildcards are the wildcards of the bridge's routes.
var routeWildcards = []string{"roomId", "eventId", "purgeId", "first", "second"}

// restoreEmptySegments gives each wildcard that matched an empty segment
// its value, "".
func restoreEmptySegments(r *http.Request) {
	for _, name := range routeWildcards {
		if r.PathValue(name) == emptySegmentUnescaped {
			r.SetPathValue(name, "")
		}
	}
}

func isDeleteStatusPath(first, second string) bool {
	return first == "delete_status" || second == "delete_status"
}

// unrecognized answers a request no route serves as Synapse's
// JsonResource does: 405 when a route serves its path with another
// method, else 404; M_UNRECOGNIZED "Unrecognized request" either way.
func unrecognized(mux *http.ServeMux, w http.ResponseWriter, r *http.Request) {
	status := 404
	for _, method := range []string{http.MethodGet, http.MethodPost, http.MethodPut, http.MethodDelete} {
		if method == r.Method {
			continue
		}
		other := r.Clone(r.Context())
		other.Method = method
		if _, pattern := mux.Handler(other); pattern != "" && pattern != "/" {
			if pattern == "GET /_synapse/admin/v2/rooms/{first}/{second}" {
				first, second, _ := strings.Cut(strings.TrimPrefix(r.URL.EscapedPath(), "/_synapse/admin/v2/rooms/"), "/")
				if !isDeleteStatusPath(first, second) {
					continue
				}
			}
			status = 405
			break
		}
	}
	writeError(w, commands.Errorf(status, commands.CodeUnrecognized, "Unrecognized request"))
}

func (b *Bridge) health(w http.ResponseWriter, r *http.Request) {
	if b.Healthy != nil && !b.Healthy() {
		w.WriteHeader(http.StatusServiceUnavailable)
		fmt.Fprintln(w, "not ready")
		return
	}
	fmt.Fprintln(w, "ok")
}

func (b *Bridge) serve(name string, admin bool, h apiHandler) http.Handler {
	return http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		start := time.Now()
		restoreEmptySegments(r)
		slots, full, retry := b.slots, "Too many requests in flight; retry shortly", "1"
		if name == "delete_room_v1" {
			// v1 answers when the shutdown is over: past the server's
			// write timeout.
			_ = http.NewResponseController(w).SetWriteDeadline(start.Add(DeleteV1Timeout + DeleteV1Grace + time.Minute))
			// Its places free up as deletions end, minutes apart.
			slots, full, retry = b.v1Slots, "Too many room deletions waiting; retry later or use the v2 API", "60"
		}
		var status int
		select {
		case slots <- struct{}{}:
			status = b.handle(w, r, admin, h)
			<-slots
		default:
			w.Header().Set("Retry-After", retry)
			status = writeError(w, commands.Errorf(429, commands.CodeRateLimited, "%s", full))
		}
		if b.Observe != nil {
			b.Observe(name, time.Since(start), status)
		}
	})
}

func (b *Bridge) handle(w http.ResponseWriter, r *http.Request, admin bool, h apiHandler) int {
	ctx, cancel := context.WithTimeout(r.Context(), requestTimeout)
	defer cancel()
	if len(r.URL.RawQuery) > MaxQueryBytes {
		return writeError(w, commands.Errorf(414, commands.CodeUnknown, "Query string too long"))
	}
	r.Body = http.MaxBytesReader(w, r.Body, MaxBodyBytes)
	id, err := b.Auth.Authenticate(ctx, r)
	if err == nil && admin && !id.Admin {
		err = commands.Errorf(403, commands.CodeForbidden, "You are not a server admin")
	}
	var out any
	if err == nil {
		out, err = h(ctx, r, id)
	}
	if err != nil {
		var e *commands.Error
		if !errors.As(err, &e) {
			b.Logger.Error("request failed", "method", r.Method, "path", r.URL.Path, "err", err)
		}
		return writeError(w, err)
	}
	w.Header().Set("Content-Type", "application/json")
	if raw, ok := out.(rawJSON); ok {
		if _, err := w.Write(append(raw, '\n')); err != nil {
			b.Logger.Warn("write response", "path", r.URL.Path, "err", err)
		}
		return http.StatusOK
	}
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(out); err != nil {
		b.Logger.Warn("write response", "path", r.URL.Path, "err", err)
	}
	return http.StatusOK
}

// writeError is the one place that turns an error into a Matrix error
// response; anything that is not a *commands.Error is a generic 500.
func writeError(w http.ResponseWriter, err error) int {
	e := commands.AsError(err)
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(e.Status)
	enc := json.NewEncoder(w)
	enc.SetEscapeHTML(false)
	_ = enc.Encode(map[string]string{"errcode": e.Code, "error": e.Message})
	return e.Status
}

// deleteRoom is the Delete Room API: v1 waits and returns the shutdown
// result, v2 returns a delete_id. An empty body is rejected (SYNAPSE.md
// 7.1): an empty request must never delete a room.
func (b *Bridge) deleteRoom(v1 bool) apiHandler {
	return func(ctx context.Context, r *http.Request, id Identity) (any, error) {
		body, err := DecodeJSONBody(r, false)
		if err != nil {
			return nil, err
		}
		// A room ID Synapse would refuse (one too long for a subject
		// among them) never reaches the service: answer here, in
		// Synapse's order (the booleans first).
		if roomID := r.PathValue("roomId"); !commands.LegalRoomID(roomID) {
			if _, err := DeleteBools(body); err != nil {
				return nil, err
			}
			return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
		}
		req := map[string]any{"requested_by": id.UserID, "wait": v1}
		for _, k := range []string{"new_room_user_id", "room_name", "message", "block", "purge", "force_purge"} {
			if v, ok := body[k]; ok {
				req[k] = v
			}
		}
		if v1 {
			ctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), DeleteV1Timeout+DeleteV1Grace)
			defer cancel()
			return b.callWith(ctx, b.DeleteReq, b.Subjects.APIRoom(r.PathValue("roomId"), "delete"), req)
		}
		return b.call(ctx, b.Subjects.APIRoom(r.PathValue("roomId"), "delete"), req)
	}
}

// DeleteV1Timeout bounds a v1 room deletion, which answers only when the
// shutdown is over: the service then answers 504 with the deletion's ID,
// to be followed with the v2 status API.
const DeleteV1Timeout = 10 * time.Minute

// DeleteV1Grace is how much longer than DeleteV1Timeout the bridge waits
// for a v1 deletion's answer: the service's bound starts when a worker
// takes the request, after the bridge's, and a bridge that gave up first
// answered 503 "scrollback did not answer", losing the deletion's ID.
const DeleteV1Grace = 30 * time.Second

func (b *Bridge) deleteStatus(ctx context.Context, r *http.Request, id Identity) (any, error) {
	first, second := r.PathValue("first"), r.PathValue("second")
	switch {
	case first == "delete_status":
		if second == "" {
			// The service takes a request without an ID for a malformed one.
			return nil, commands.Errorf(404, commands.CodeNotFound, "delete id '' not found")
		}
		return b.call(ctx, b.Subjects.API("delete_status"), map[string]any{"delete_id": second})
	default: // second == "delete_status": the route lets no other shape in
		if !commands.LegalRoomID(first) {
			return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", first)
		}
		return b.call(ctx, b.Subjects.APIRoom(first, "delete_status"), map[string]any{})
	}
}

// purgeHistory: body (empty is {}), then the cut-off from the URL's event
// ID or the body (SYNAPSE.md 6.1).
func (b *Bridge) purgeHistory(ctx context.Context, r *http.Request, id Identity) (any, error) {
	body, err := DecodeJSONBody(r, true)
	if err != nil {
		return nil, err
	}
	req := map[string]any{"delete_local_events": commands.Truthy(body["delete_local_events"]), "requested_by": id.UserID}
	// The URL's event ID, even an empty one (a trailing slash: Synapse
	// then looks up "" and finds nothing), wins over the body.
	if strings.Contains(r.Pattern, "{eventId}") {
		req["event_id"] = r.PathValue("eventId")
	} else if ev, ok := body["purge_up_to_event_id"]; ok && ev != nil {
		req["event_id"] = ev
	} else if ts, ok := body["purge_up_to_ts"]; ok {
		// Exactly an int (a bool, a float, a string, null are not), as
		// the service checks (Admin.PurgeHistory): here too, so that a
		// room ID the service never sees gets the same answer.
		_, isInt := commands.AsInt(ts)
		if _, big := ts.(uint64); !isInt && !big {
			return nil, commands.Errorf(400, commands.CodeBadJSON, "purge_up_to_ts must be an int")
		}
		req["purge_up_to_ts"] = ts
	} else {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "must specify purge_up_to_event_id or purge_up_to_ts")
	}
	// An empty room ID, or one longer than Matrix allows (and, past about
	// 750 bytes, too long for a subject), never reaches the service, and
	// no event can be in it. Once the body has passed every check Synapse
	// makes before its look-ups (SYNAPSE.md 6.1), a time cut-off finds
	// nothing, as there; an event cut-off is answered as the deletion and
	// block routes answer such a room, since only the service knows
	// whether the event is elsewhere ("Event is for wrong room.") or
	// nowhere (404). Other room IDs, of any shape, go on to the service.
	roomID := r.PathValue("roomId")
	if roomID == "" || len(roomID) > commands.MaxIDLength {
		if _, byEvent := req["event_id"]; byEvent {
			return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
		}
		return nil, commands.Errorf(404, commands.CodeNotFound, "there is no event to be purged")
	}
	return b.call(ctx, b.Subjects.APIRoom(roomID, "purge_history"), req)
}

func (b *Bridge) purgeStatus(ctx context.Context, r *http.Request, id Identity) (any, error) {
	purgeID := r.PathValue("purgeId")
	if purgeID == "" {
		// The service takes a request without an ID for a malformed one.
		return nil, commands.Errorf(404, commands.CodeNotFound, "purge id '' not found")
	}
	return b.call(ctx, b.Subjects.API("purge_status"), map[string]any{"purge_id": purgeID})
}

func (b *Bridge) getBlock(ctx context.Context, r *http.Request, id Identity) (any, error) {
	roomID := r.PathValue("roomId")
	if !commands.LegalRoomID(roomID) {
		return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
	}
	return b.call(ctx, b.Subjects.APIRoom(roomID, "block"), map[string]any{})
}

// putBlock validates in Synapse's order: body, room ID, then block.
func (b *Bridge) putBlock(ctx context.Context, r *http.Request, id Identity) (any, error) {
	body, err := DecodeJSONBody(r, false)
	if err != nil {
		return nil, err
	}
	roomID := r.PathValue("roomId")
	if !commands.LegalRoomID(roomID) {
		return nil, commands.Errorf(400, commands.CodeUnknown, "%s is not a legal room ID", roomID)
	}
	v, ok := body["block"]
	if !ok {
		return nil, commands.Errorf(400, commands.CodeMissingParam, "Missing params: ['block']")
	}
	if _, ok := v.(bool); !ok {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "Param 'block' must be a boolean.")
	}
	return b.call(ctx, b.Subjects.APIRoom(roomID, "block"), map[string]any{"block": v, "requested_by": id.UserID})
}

func (b *Bridge) clientMessages(ctx context.Context, r *http.Request, id Identity) (any, error) {
	req, err := messagesQuery(r)
	if err != nil {
		return nil, err
	}
	req["user_id"] = id.UserID
	return b.memberMessages(ctx, r.PathValue("roomId"), id.UserID, req)
}

// memberMessages reads for user, with the ignore list the homeserver
// keeps for them (none for an identity without a user ID).
func (b *Bridge) memberMessages(ctx context.Context, roomID, user string, req map[string]any) (any, error) {
	if err := checkMessagesRoom(roomID); err != nil {
		return nil, err // before asking the homeserver anything
	}
	if user != "" {
		if ignored := b.ignoredUsers(ctx, user); len(ignored) > 0 {
			req["ignored_users"] = ignored
		}
	}
	return b.messages(ctx, roomID, req)
}

// ignoredUsers asks the homeserver for the user's ignore list
// (sb.hs.ignored_users). No homeserver answering, an error reply, a
// timeout and a reply that is not a map all mean nobody is ignored:
// CONTRACT.md section 5 makes each an expected condition in which a read
// still answers with what is local, and Synapse, which keeps the list
// itself, never fails a read over it. The reader's access is the
// service's to check, so a reader who may not read the room still gets
// Synapse's 403. All but the missing homeserver are logged, once every
// 10 s at most (any reader can cause them).
func (b *Bridge) ignoredUsers(ctx context.Context, userID string) []any {
	data, err := b.Auth.askHomeserver(ctx, "ignored_users", map[string]any{"user_id": userID})
	if errors.Is(err, bus.ErrNoResponders) {
		return nil
	}
	var m map[string]any
	if err == nil {
		m, err = bus.DecodeMap(data, bus.DefaultLimits)
	}
	if err != nil {
		if now := time.Now().UnixNano(); now-b.lastIgnoreWarn.Load() >= int64(10*time.Second) {
			b.lastIgnoreWarn.Store(now)
			b.Logger.Warn("no ignore list from the homeserver: the read answers as if the reader ignored nobody", "user_id", userID, "err", err)
		}
		return nil
	}
	list, _ := m["ignored_users"].([]any)
	out := list[:0]
	for _, u := range list {
		if s, ok := u.(string); ok && len(s) <= commands.MaxIDLength {
			out = append(out, s)
		}
	}
	return out
}

// adminMessages is Synapse's RoomMessagesRestServlet: no membership check
// nor visibility, but the admin's user ID and ignore list for the bundled
// aggregations, as in a client read.
func (b *Bridge) adminMessages(ctx context.Context, r *http.Request, id Identity) (any, error) {
	req, err := messagesQuery(r)
	if err != nil {
		return nil, err
	}
	req["admin"] = true
	if id.UserID != "" {
		req["user_id"] = id.UserID
	}
	return b.memberMessages(ctx, r.PathValue("roomId"), id.UserID, req)
}

// checkMessagesRoom refuses a /messages room ID that no room can have.
func checkMessagesRoom(roomID string) error {
	if roomID == "" || len(roomID) > commands.MaxIDLength {
		return commands.Errorf(400, commands.CodeInvalidParam, "Invalid room ID")
	}
	return nil
}

func (b *Bridge) messages(ctx context.Context, roomID string, req map[string]any) (any, error) {
	if err := checkMessagesRoom(roomID); err != nil {
		return nil, err
	}
	subject := b.Subjects.APIRoom(roomID, "messages")
	data, err := b.request(ctx, b.Req, subject, req)
	if err != nil {
		return nil, err
	}
	out, err := replyJSON(data)
	if err != nil {
		return nil, fmt.Errorf("decode reply of %s: %w", subject, err)
	}
	return out, nil
}

// call sends a request to the service and decodes its MessagePack reply
// into JSON-ready values.
func (b *Bridge) call(ctx context.Context, subject string, req map[string]any) (any, error) {
	return b.callWith(ctx, b.Req, subject, req)
}

func (b *Bridge) callWith(ctx context.Context, rq Requester, subject string, req map[string]any) (any, error) {
	data, err := b.request(ctx, rq, subject, req)
	if err != nil {
		return nil, err
	}
	m, err := bus.DecodeMap(data, bus.DefaultLimits)
	if err != nil {
		return nil, fmt.Errorf("decode reply of %s: %w", subject, err)
	}
	return m, nil
}

// request sends a request to the service; an error reply is the
// service's *commands.Error, and no answer is 503.
func (b *Bridge) request(ctx context.Context, rq Requester, subject string, req map[string]any) ([]byte, error) {
	if rq == nil {
		rq = b.Req
	}
	data, err := rq.Request(ctx, subject, req)
	if err != nil {
		var e *commands.Error
		if errors.As(err, &e) {
			return nil, e
		}
		if errors.Is(err, bus.ErrNoResponders) || errors.Is(err, context.DeadlineExceeded) {
			return nil, commands.Errorf(503, commands.CodeUnknown, "scrollback did not answer")
		}
		return nil, err
	}
	return data, nil
}

// messagesQuery translates /messages query parameters into the request
// map of the messages endpoint, with Synapse's parsing errors.
func messagesQuery(r *http.Request) (map[string]any, error) {
	q := twistedQuery(r.URL.RawQuery)
	req := map[string]any{}
	// Synapse's parse_string decodes and checks every value of a repeated
	// parameter (parse_strings_from_args), then takes the first.
	for _, v := range q["dir"] {
		if !isASCII(v) {
			return nil, commands.Errorf(400, commands.CodeUnknown, "Query parameter 'dir' must be ascii")
		}
		if v != "b" && v != "f" {
			return nil, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter 'dir' must be one of ['b', 'f']")
		}
	}
	if q.Has("dir") {
		req["dir"] = q.Get("dir")
	}
	// parse_string's ascii for from, then for to, then their tokens, all
	// before limit and filter, as Synapse's PaginationConfig.from_request
	// reads them.
	for _, k := range []string{"from", "to"} {
		for _, v := range q[k] {
			if !isASCII(v) {
				return nil, commands.Errorf(400, commands.CodeUnknown, "Query parameter '%s' must be ascii", k)
			}
		}
	}
	for _, k := range []string{"from", "to"} {
		if !q.Has(k) {
			continue
		}
		v := q.Get(k)
		if _, err := parseTokenParam(k, v); err != nil {
			return nil, err
		}
		req[k] = v
	}
	if q.Has("limit") {
		n, err := parseLimit(q.Get("limit"))
		if err != nil {
			return nil, err
		}
		req["limit"] = n
	}
	if q.Has("filter") {
		// Synapse's parse_json: the value as UTF-8, URL-unquoted once more
		// (urllib.parse.unquote), then JSON.
		for _, v := range q["filter"] {
			if !utf8.ValidString(v) {
				return nil, commands.Errorf(400, commands.CodeUnknown, "Query parameter 'filter' must be utf-8")
			}
		}
		raw := q.Get("filter")
		// The filter is a value of the request map, one level below
		// its top: nested as deep as a body may be, it made a request
		// the service refuses (bus.RequestLimits), answered with a
		// 400 about MessagePack.
		f, err := parseJSONParamAt(pyUnquote(raw), 1)
		if errors.Is(err, errTooManyValues) {
			return nil, tooManyValues("Query parameter filter")
		}
		if err != nil {
			return nil, commands.Errorf(400, commands.CodeNotJSON, "Query parameter filter must be a valid JSON object")
		}
		// A falsy value (null, [], 0, false, "", {}) is no filter, as
		// Synapse's "if filter_json" has it; another non-object is 400
		// (Synapse's Filter crashes on it with a 500).
		if m, ok := f.(map[string]any); ok && len(m) > 0 {
			req["filter"] = m
		} else if !ok && commands.Truthy(f) {
			return nil, commands.Errorf(400, commands.CodeNotJSON, "Query parameter filter must be a valid JSON object")
		}
	}
	// Synapse's `b"raw" not in request.args`: any raw parameter, whatever
	// its value, asks for the federation format (SYNAPSE.md 1.1 step 4).
	if q.Has("raw") {
		req["event_format"] = "federation"
	}
	return req, nil
}

func isASCII(s string) bool {
	for i := 0; i < len(s); i++ {
		if s[i] >= utf8.RuneSelf {
			return false
		}
	}
	return true
}

// pyUnquote is Python's urllib.parse.unquote for a valid UTF-8 s:
// unquoteBytes, then the decoded bytes read as UTF-8 with invalid ones
// replaced by U+FFFD (s's own characters are whole, so only decoded bytes
// can be invalid).
func pyUnquote(s string) string {
	return strings.ToValidUTF8(unquoteBytes(s), "\uFFFD")
}

// pythonDigits reports whether s is decimal digits as Python's int()
// takes them: at least one, with single underscores between digits.
func pythonDigits(s string) bool {
	if s == "" || s[0] == '_' || s[len(s)-1] == '_' || strings.Contains(s, "__") {
		return false
	}
	return strings.Trim(s, "0123456789_") == ""
}

func isHex(c byte) bool {
	return '0' <= c && c <= '9' || 'a' <= c && c <= 'f' || 'A' <= c && c <= 'F'
}

func unhex(c byte) byte {
	switch {
	case c <= '9':
		return c - '0'
	case c <= 'F':
		return c - 'A' + 10
	}
	return c - 'a' + 10
}

// twistedQuery parses a query string as Twisted's parse_qs does for
// Synapse's request.args: pairs are separated by '&' or ';', a pair
// without '=' is dropped, '+' is a space, and %XX escapes are decoded
// with a malformed one kept as it is (unquote_to_bytes). Go's
// url.ParseQuery drops a pair with a malformed escape and keeps one
// without '=' as empty.
func twistedQuery(raw string) url.Values {
	q := url.Values{}
	for _, amp := range strings.Split(raw, "&") {
		for _, item := range strings.Split(amp, ";") {
			k, v, ok := strings.Cut(item, "=")
			if !ok {
				continue
			}
			k = unquoteBytes(strings.ReplaceAll(k, "+", " "))
			q[k] = append(q[k], unquoteBytes(strings.ReplaceAll(v, "+", " ")))
		}
	}
	return q
}

// unquoteBytes is Python's urllib.parse.unquote_to_bytes: each %XX
// becomes its byte, and a '%' not followed by two hex digits stays.
func unquoteBytes(s string) string {
	if !strings.Contains(s, "%") {
		return s
	}
	out := make([]byte, 0, len(s))
	for i := 0; i < len(s); i++ {
		if s[i] == '%' && i+2 < len(s) && isHex(s[i+1]) && isHex(s[i+2]) {
			out = append(out, unhex(s[i+1])<<4|unhex(s[i+2]))
			i += 2
			continue
		}
		out = append(out, s[i])
	}
	return string(out)
}

// pyMaxStrDigits is Python's default int_max_str_digits: int() of a
// decimal string of more digits raises ValueError, and Synapse never
// raises the limit.
const pyMaxStrDigits = 4300

// parseLimit follows Synapse's parse_integer, Python's int() of the
// value's bytes: surrounding ASCII whitespace, a sign, digits with single
// underscores between them; never negative; huge values are clamped
// later.
func parseLimit(s string) (int64, error) {
	t := strings.Trim(s, " \t\n\r\v\f")
	digits := strings.TrimLeft(t, "+-")
	if !pythonDigits(digits) || len(t)-len(digits) > 1 {
		return 0, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter limit must be an integer")
	}
	digits = strings.ReplaceAll(digits, "_", "")
	if len(digits) > pyMaxStrDigits {
		return 0, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter limit must be an integer")
	}
	if strings.HasPrefix(t, "-") {
		if strings.Trim(digits, "0") == "" {
			return 0, nil
		}
		return 0, commands.Errorf(400, commands.CodeInvalidParam, "Query parameter limit must be a positive integer.")
	}
	n, err := strconv.ParseInt(digits, 10, 64)
	if err != nil {
		return MaxLimit, nil // all digits, only too large: clamped like Synapse
	}
	return n, nil
}

// parseJSONParam decodes a JSON query parameter into MessagePack-ready
// values: integers become int64, others float64. An integer beyond int64
// is clamped to it: it stays an integer, as Python's json keeps it an
// int (purge_up_to_ts is checked to be one, and then only compared with
// received times, which are all within int64); a float beyond float64 is
// clamped to it likewise. Values nested deeper than maxJSONDepth are an
// error (Python's limit is its recursion limit, about 1,000): the service
// refuses requests nested deeper than that (bus.RequestLimits). So is a
// value that holds more values than the service takes in a request
// (errTooManyValues), which Python's json has no limit on.
func parseJSONParam(s string) (any, error) { return parseJSONParamAt(s, 0) }

// parseJSONParamAt is parseJSONParam for a value that the request to the
// service holds at depth at (0: the request itself), so that its
// nesting is bounded where the service's is.
func parseJSONParamAt(s string, at int) (any, error) {
	dec := json.NewDecoder(strings.NewReader(s))
	dec.UseNumber()
	var v any
	if err := dec.Decode(&v); err != nil {
		return nil, err
	}
	// Python's json raises "Extra data" for anything after the value;
	// Decoder.More misses a stray ']' or '}', so look for the end itself.
	if _, err := dec.Token(); err != io.EOF {
		return nil, errors.New("trailing data")
	}
	var values int
	return normalizeJSON(v, at, &values)
}

// DecodeJSONBody decodes a request body into an object with Synapse's
// errors: unparseable "Content not JSON.", non-object "Content must be a
// JSON object.". emptyOK makes an empty body, or null, {}. A body of more
// values than the service takes is 400 M_TOO_LARGE (errTooManyValues).
func DecodeJSONBody(r *http.Request, emptyOK bool) (map[string]any, error) {
	var buf bytes.Buffer
	if _, err := buf.ReadFrom(r.Body); err != nil {
		var tooBig *http.MaxBytesError
		if errors.As(err, &tooBig) {
			return nil, commands.Errorf(413, commands.CodeLimitExceeded, "Request body too large")
		}
		return nil, commands.Errorf(400, commands.CodeNotJSON, "Content not JSON.")
	}
	if buf.Len() == 0 {
		if emptyOK {
			return map[string]any{}, nil
		}
		return nil, commands.Errorf(400, commands.CodeNotJSON, "Content not JSON.")
	}
	// Synapse decodes the body as UTF-8 first; Go's decoder would turn
	// invalid bytes into U+FFFD and go on.
	if !utf8.Valid(buf.Bytes()) {
		return nil, commands.Errorf(400, commands.CodeNotJSON, "Content not JSON.")
	}
	v, err := parseJSONParam(buf.String())
	if errors.Is(err, errTooManyValues) {
		return nil, tooManyValues("Request body")
	}
	if err != nil {
		return nil, commands.Errorf(400, commands.CodeNotJSON, "Content not JSON.")
	}
	if v == nil && emptyOK {
		// Synapse's parse_json_object_from_request takes null as it takes
		// an empty body where one is allowed: as {}.
		return map[string]any{}, nil
	}
	m, ok := v.(map[string]any)
	if !ok {
		return nil, commands.Errorf(400, commands.CodeBadJSON, "Content must be a JSON object.")
	}
	return m, nil
}

const maxJSONDepth = 100

// errTooManyValues: a JSON body or filter holds more values than the
// service takes in a request, bus.RequestLimits.MaxElements, counted as
// the service counts them: every value, and every key of an object. A
// body under MaxBodyBytes can hold twice as many ([0,0,...]); passed on,
// it was refused by the service with a text about MessagePack, or went
// through when its values were in a field the route drops. The limit is
// the service's own, so that the two cannot drift apart.
var errTooManyValues = errors.New("too many values")

// tooManyValues is the answer to a JSON input, named by what, past
// errTooManyValues's limit: 400 M_TOO_LARGE (Matrix's errcode for a
// request too large, the bridge's for a body past MaxBodyBytes), with the
// limit in words an admin who sent JSON can act on. Synapse has no such
// limit.
func tooManyValues(what string) *commands.Error {
	return commands.Errorf(400, commands.CodeLimitExceeded, "%s has too many values (at most %d)", what, bus.RequestLimits.MaxElements)
}

// normalizeJSON normalizes v (see parseJSONParam), which the request to
// the service holds at depth, adding its values to *values.
func normalizeJSON(v any, depth int, values *int) (any, error) {
	if depth > maxJSONDepth {
		return nil, errors.New("nested too deeply")
	}
	*values++
	if *values > bus.RequestLimits.MaxElements {
		return nil, errTooManyValues
	}
	switch x := v.(type) {
	case json.Number:
		if n, err := x.Int64(); err == nil {
			return n, nil
		}
		if s := x.String(); !strings.ContainsAny(s, ".eE") {
			// A JSON integer (the decoder checked the syntax) that
			// overflows int64; Python's int() refuses one of more than
			// pyMaxStrDigits digits, and so does its json.
			if len(strings.TrimPrefix(s, "-")) > pyMaxStrDigits {
				return nil, errors.New("integer of more than 4300 digits")
			}
			if strings.HasPrefix(s, "-") {
				return int64(math.MinInt64), nil
			}
			return int64(math.MaxInt64), nil
		}
		f, err := x.Float64()
		if math.IsInf(f, 0) {
			// Beyond float64 (1e400), where Python's json gives inf: it
			// stays a float, clamped so that it can be written as JSON
			// again; a float's only uses are its type and its truth.
			return math.Copysign(math.MaxFloat64, f), nil
		}
		if err != nil {
			return nil, err
		}
		return f, nil
	case map[string]any:
		*values += len(x) // its keys
		if *values > bus.RequestLimits.MaxElements {
			return nil, errTooManyValues
		}
		for k, c := range x {
			n, err := normalizeJSON(c, depth+1, values)
			if err != nil {
				return nil, err
			}
			x[k] = n
		}
	case []any:
		for i, c := range x {
			n, err := normalizeJSON(c, depth+1, values)
			if err != nil {
				return nil, err
			}
			x[i] = n
		}
	}
	return v, nil
}
