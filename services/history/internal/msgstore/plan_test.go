package msgstore_test

import (
	"context"
	"strings"
	"testing"

	"github.com/communications/communications/libs/testenv"
	"github.com/communications/communications/services/history/internal/msgstore"
)

// Clearing a deleted message's edits reads them through their index, not
// the whole table: it runs inside the writer's transaction, so a scan
// would slow every batch with a deletion as history grows.
func TestClearEditsUsesIndex(t *testing.T) {
	t.Parallel()
	_, pool := newStore(t)
	ctx := context.Background()
	if _, err := pool.Exec(ctx, `
		INSERT INTO messages (chat_id, seq, sender_id, sender, client_msg_id, text, sent_at, kind, target_seq)
		SELECT 1 + s % 20, s, 1, 'user1', 'c' || s, 'text', now(),
		       CASE WHEN s % 10 = 0 THEN 'edit' ELSE 'message' END,
		       CASE WHEN s % 10 = 0 THEN s - 1 END
		FROM generate_series(1, 20000) AS s`); err != nil {
		t.Fatal(err)
	}
	if _, err := pool.Exec(ctx, `ANALYZE messages`); err != nil {
		t.Fatal(err)
	}
	plan := testenv.Plan(t, pool, msgstore.ClearEditsSQL, []int64{3}, []int64{1003})
	if !strings.Contains(plan, "messages_edits_by_target") || strings.Contains(plan, "Seq Scan on messages") {
		t.Errorf("clearing edits does not use messages_edits_by_target:\n%s", plan)
	}
}
