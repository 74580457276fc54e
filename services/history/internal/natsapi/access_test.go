package natsapi

import (
	"errors"
	"fmt"
	"testing"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/protocol"
)

// The cache drops a grant when a background check is refused, and keeps it
// to its TTL when the chat service did not answer (libs/grantcache tests
// the cache itself; e2e/api_test.go the removal event end to end).
func TestIsRefusal(t *testing.T) {
	t.Parallel()
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{busapi.Errorf(protocol.CodeNotAMember, "not a member"), true},
		{fmt.Errorf("check: %w", busapi.Errorf(protocol.CodeChatNotFound, "no such chat")), true},
		{busapi.Errorf(protocol.CodeUnavailable, "retry"), false},
		{errors.New("nats: timeout"), false},
	} {
		if got := isRefusal(tc.err); got != tc.want {
			t.Errorf("isRefusal(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}
