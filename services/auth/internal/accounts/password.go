package accounts

import (
	"crypto/rand"
	"crypto/subtle"
	"encoding/base64"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"golang.org/x/crypto/argon2"
)

// params are argon2id cost parameters.
type params struct {
	memory  uint32 // KiB
	time    uint32 // passes
	threads uint8
	saltLen int // bytes
	keyLen  int // bytes
}

// defaultParams are OWASP's recommended argon2id parameters: 19 MiB of
// memory, two passes, one lane, a 16-byte salt and a 32-byte key.
var defaultParams = params{memory: 19456, time: 2, threads: 1, saltLen: 16, keyLen: 32}

// Limits on parameters read back from a stored hash, so a corrupt row cannot
// make one login allocate gigabytes or spin for minutes.
const (
	maxMemory = 1 << 20 // KiB (1 GiB)
	maxTime   = 16
	minSalt   = 8
	minKey    = 16
	maxKey    = 64
)

var errMalformedHash = errors.New("malformed password hash")

// b64 is the PHC string format's base64: standard alphabet, no padding.
var b64 = base64.RawStdEncoding

// hashPassword returns password's argon2id hash in PHC string format:
// $argon2id$v=19$m=19456,t=2,p=1$<salt>$<key>.
func hashPassword(password string, p params) (string, error) {
	salt := make([]byte, p.saltLen)
	if _, err := rand.Read(salt); err != nil {
		return "", fmt.Errorf("read salt: %w", err)
	}
	key := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, uint32(p.keyLen))
	return fmt.Sprintf("$argon2id$v=%d$m=%d,t=%d,p=%d$%s$%s",
		argon2.Version, p.memory, p.time, p.threads, b64.EncodeToString(salt), b64.EncodeToString(key)), nil
}

// verifyPassword reports whether password matches the PHC string phc,
// comparing in constant time.
func verifyPassword(password, phc string) (bool, error) {
	p, salt, key, err := parsePHC(phc)
	if err != nil {
		return false, err
	}
	got := argon2.IDKey([]byte(password), salt, p.time, p.memory, p.threads, uint32(len(key)))
	return subtle.ConstantTimeCompare(got, key) == 1, nil
}

// parsePHC parses an argon2id PHC string into its parameters, salt and key.
func parsePHC(phc string) (p params, salt, key []byte, err error) {
	fields := strings.Split(phc, "$")
	if len(fields) != 6 || fields[0] != "" || fields[1] != "argon2id" {
		return params{}, nil, nil, fmt.Errorf("%w: not an argon2id PHC string", errMalformedHash)
	}
	if fields[2] != "v="+strconv.Itoa(argon2.Version) {
		return params{}, nil, nil, fmt.Errorf("%w: unsupported version %q", errMalformedHash, fields[2])
	}
	kv := strings.Split(fields[3], ",")
	if len(kv) != 3 {
		return params{}, nil, nil, fmt.Errorf("%w: want parameters m, t and p", errMalformedHash)
	}
	var vals [3]uint64
	for i, name := range []string{"m=", "t=", "p="} {
		s, ok := strings.CutPrefix(kv[i], name)
		if !ok {
			return params{}, nil, nil, fmt.Errorf("%w: want parameter %q, got %q", errMalformedHash, name, kv[i])
		}
		if vals[i], err = strconv.ParseUint(s, 10, 32); err != nil {
			return params{}, nil, nil, fmt.Errorf("%w: parameter %q: %w", errMalformedHash, name, err)
		}
	}
	p = params{memory: uint32(vals[0]), time: uint32(vals[1])}
	if vals[2] < 1 || vals[2] > 255 || p.time < 1 || p.time > maxTime || p.memory < 8*uint32(vals[2]) || p.memory > maxMemory {
		return params{}, nil, nil, fmt.Errorf("%w: parameters out of range", errMalformedHash)
	}
	p.threads = uint8(vals[2])
	if salt, err = b64.Strict().DecodeString(fields[4]); err != nil || len(salt) < minSalt {
		return params{}, nil, nil, fmt.Errorf("%w: bad salt", errMalformedHash)
	}
	if key, err = b64.Strict().DecodeString(fields[5]); err != nil || len(key) < minKey || len(key) > maxKey {
		return params{}, nil, nil, fmt.Errorf("%w: bad key", errMalformedHash)
	}
	p.saltLen, p.keyLen = len(salt), len(key)
	return p, salt, key, nil
}
