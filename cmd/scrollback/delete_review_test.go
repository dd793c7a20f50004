package main

import (
	"testing"
)

// TestDeleteRoom_NullBoolIsNotABoolean: Synapse reads block, purge and
// force_purge with content.get(key, default) and then checks isinstance
// bool, so an explicit JSON null is "must be a boolean, if given", not the
// default (SYNAPSE.md 7.1).
func TestDeleteRoom_NullBoolIsNotABoolean(t *testing.T) {
	m := startMain(t)
	for _, k := range []string{"block", "purge", "force_purge"} {
		for _, v := range []string{"v1", "v2"} {
			st, body := m.do(t, "DELETE", deletePath(v, "!nulls:test"), "tok-admin", `{"`+k+`": null}`)
			wantErr(t, st, body, 400, "M_BAD_JSON", "Param '"+k+"' must be a boolean, if given")
		}
	}
}
