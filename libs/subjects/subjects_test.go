package subjects

import "testing"

func TestNew(t *testing.T) {
	t.Parallel()
	tests := []struct {
		name    string
		prefix  string
		wantErr bool
	}{
		{name: "default", prefix: "comms"},
		{name: "dotted", prefix: "test.run-1a"},
		{name: "underscore", prefix: "a_b", wantErr: true},
		{name: "upper case", prefix: "Comms", wantErr: true},
		{name: "empty", prefix: "", wantErr: true},
		{name: "wildcard", prefix: "comms.*", wantErr: true},
		{name: "tail wildcard", prefix: "a.>", wantErr: true},
		{name: "space", prefix: "a b", wantErr: true},
		{name: "empty token", prefix: "a..b", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			_, err := New(tc.prefix)
			if (err != nil) != tc.wantErr {
				t.Fatalf("New(%q) error = %v, want error %v", tc.prefix, err, tc.wantErr)
			}
		})
	}
}

func TestNames(t *testing.T) {
	t.Parallel()
	s, err := New("t1.x-y")
	if err != nil {
		t.Fatal(err)
	}
	tests := []struct{ name, got, want string }{
		{"send", s.ChatSend(), "t1.x-y.chat.send"},
		{"message", s.Message(42), "t1.x-y.msg.42"},
		{"direct", s.ChatDirect(), "t1.x-y.chat.direct"},
		{"read", s.ChatRead(), "t1.x-y.chat.read"},
		{"read events", s.ChatEventsRead(), "t1.x-y.chat.events.read"},
		{"unread", s.HistoryUnread(), "t1.x-y.history.unread"},
		{"all", s.MessagesAll(), "t1.x-y.msg.>"},
		{"stream", s.MessagesStream(), "T1_X-Y_MESSAGES"},
	}
	for _, tc := range tests {
		if tc.got != tc.want {
			t.Errorf("%s = %q, want %q", tc.name, tc.got, tc.want)
		}
	}
}
