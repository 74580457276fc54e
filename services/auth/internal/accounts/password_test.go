package accounts

import (
	"errors"
	"strings"
	"testing"

	"github.com/google/go-cmp/cmp"
)

func TestHashPasswordRoundTrip(t *testing.T) {
	t.Parallel()
	phc, err := hashPassword("correct horse battery staple", defaultParams)
	if err != nil {
		t.Fatal(err)
	}
	if !strings.HasPrefix(phc, "$argon2id$v=19$m=19456,t=2,p=1$") {
		t.Fatalf("hash %q does not start with the OWASP argon2id parameters", phc)
	}
	p, salt, key, err := parsePHC(phc)
	if err != nil {
		t.Fatalf("parse own hash: %v", err)
	}
	if diff := cmp.Diff(defaultParams, p, cmp.AllowUnexported(params{})); diff != "" {
		t.Errorf("parsed params (-want +got):\n%s", diff)
	}
	if len(salt) != 16 || len(key) != 32 {
		t.Errorf("salt %d bytes, key %d bytes; want 16 and 32", len(salt), len(key))
	}
	other, err := hashPassword("correct horse battery staple", defaultParams)
	if err != nil {
		t.Fatal(err)
	}
	if other == phc {
		t.Error("two hashes of one password are equal: the salt is not random")
	}

	for _, tc := range []struct {
		name     string
		password string
		want     bool
	}{
		{name: "right", password: "correct horse battery staple", want: true},
		{name: "wrong", password: "correct horse battery stapler"},
		{name: "case", password: "Correct horse battery staple"},
		{name: "empty"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, err := verifyPassword(tc.password, phc)
			if err != nil {
				t.Fatal(err)
			}
			if got != tc.want {
				t.Errorf("verifyPassword(%q) = %v, want %v", tc.password, got, tc.want)
			}
		})
	}
}

// TestVerifyKnownHash checks compatibility with other argon2id
// implementations: the hash is a test vector of the reference implementation
// (phc-winner-argon2, src/test.c: password "password", salt "somesalt").
func TestVerifyKnownHash(t *testing.T) {
	t.Parallel()
	const phc = "$argon2id$v=19$m=65536,t=2,p=1$c29tZXNhbHQ$CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
	ok, err := verifyPassword("password", phc)
	if err != nil {
		t.Fatal(err)
	}
	if !ok {
		t.Error("reference hash does not verify")
	}
}

func TestParsePHC(t *testing.T) {
	t.Parallel()
	const salt, key = "c29tZXNhbHRzb21lc2FsdA", "CTFhFdXPJO1aFaMaO6Mm5c8y7cJHAph8ArZWb2GRPPc"
	tests := []struct {
		name    string
		phc     string
		want    params
		wantErr bool
	}{
		{name: "valid", phc: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key,
			want: params{memory: 19456, time: 2, threads: 1, saltLen: 16, keyLen: 32}},
		{name: "other params", phc: "$argon2id$v=19$m=65536,t=3,p=4$" + salt + "$" + key,
			want: params{memory: 65536, time: 3, threads: 4, saltLen: 16, keyLen: 32}},
		{name: "empty", phc: "", wantErr: true},
		{name: "argon2i", phc: "$argon2i$v=19$m=19456,t=2,p=1$" + salt + "$" + key, wantErr: true},
		{name: "bcrypt", phc: "$2a$10$N9qo8uLOickgx2ZMRZoMyeIjZAgcfl7p92ldGxad68LJZdL17lhWy", wantErr: true},
		{name: "old version", phc: "$argon2id$v=16$m=19456,t=2,p=1$" + salt + "$" + key, wantErr: true},
		{name: "missing version", phc: "$argon2id$m=19456,t=2,p=1$" + salt + "$" + key, wantErr: true},
		{name: "params out of order", phc: "$argon2id$v=19$t=2,m=19456,p=1$" + salt + "$" + key, wantErr: true},
		{name: "missing param", phc: "$argon2id$v=19$m=19456,t=2$" + salt + "$" + key, wantErr: true},
		{name: "negative param", phc: "$argon2id$v=19$m=19456,t=-2,p=1$" + salt + "$" + key, wantErr: true},
		{name: "zero time", phc: "$argon2id$v=19$m=19456,t=0,p=1$" + salt + "$" + key, wantErr: true},
		{name: "zero threads", phc: "$argon2id$v=19$m=19456,t=2,p=0$" + salt + "$" + key, wantErr: true},
		{name: "huge memory", phc: "$argon2id$v=19$m=4194304,t=2,p=1$" + salt + "$" + key, wantErr: true},
		{name: "huge time", phc: "$argon2id$v=19$m=19456,t=1000,p=1$" + salt + "$" + key, wantErr: true},
		{name: "padded salt", phc: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "==$" + key, wantErr: true},
		{name: "url alphabet", phc: "$argon2id$v=19$m=19456,t=2,p=1$c29tZXNhbHRz_21lc2FsdA$" + key, wantErr: true},
		{name: "short salt", phc: "$argon2id$v=19$m=19456,t=2,p=1$c2FsdA$" + key, wantErr: true},
		{name: "short key", phc: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$c2FsdA", wantErr: true},
		{name: "trailing field", phc: "$argon2id$v=19$m=19456,t=2,p=1$" + salt + "$" + key + "$", wantErr: true},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			t.Parallel()
			got, _, _, err := parsePHC(tc.phc)
			if tc.wantErr {
				if !errors.Is(err, errMalformedHash) {
					t.Fatalf("parsePHC error = %v, want %v", err, errMalformedHash)
				}
				return
			}
			if err != nil {
				t.Fatal(err)
			}
			if diff := cmp.Diff(tc.want, got, cmp.AllowUnexported(params{})); diff != "" {
				t.Errorf("params (-want +got):\n%s", diff)
			}
		})
	}
}
