package main

import (
	"testing"

	"github.com/scrollback/scrollback/bus"
	"github.com/scrollback/scrollback/projections"
	"github.com/scrollback/scrollback/testenv"
)

// The lag gauge counts the messages the log holds beyond the applied
// ones, also those the projector was not delivered yet: before its first
// delivery it knows nothing of the log's end, and it reported no lag.
func TestProjectionLag_CountsUndeliveredMessages(t *testing.T) {
	n := testenv.NewNATS(t)
	subjects := bus.Subjects{Prefix: "sb"}
	log := n.Stream(t, subjects, "SCROLLBACK")
	pub := &testenv.Publisher{JS: n.JS, Subjects: subjects}
	room := testenv.NewRoom("lag", "test.example")
	evs := room.Setup("@alice:test.example")
	for i := range 20 {
		evs = append(evs, room.Msg("@alice:test.example", "message "+string(rune('a'+i))))
	}
	pub.Publish(t, evs...)

	p := &projections.Projector{Store: testenv.NewStore(t), Source: log, Decode: subjects.Decode, RoomKeyOf: roomKeyToken("sb")}
	if err := p.Init(); err != nil {
		t.Fatal(err)
	}
	lag := projectionLag(p, log)
	if got := lag(); got != float64(len(evs)) {
		t.Fatalf("lag before the projector ran = %v, want %d", got, len(evs))
	}
	defer runProjector(t, p, uint64(len(evs)))()
	if got := lag(); got != 0 {
		t.Fatalf("lag once everything is applied = %v, want 0", got)
	}
}
