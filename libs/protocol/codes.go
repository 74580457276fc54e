package protocol

// Code is a stable, machine-readable error code. The same codes are used in
// websocket error events, in HTTP error bodies
// ({"error":{"code":"...","message":"..."}}) and between services on NATS.
// Codes are append-only: a code, once shipped, keeps its meaning forever.
type Code string

// Request errors: the request was wrong. Retrying the same request gives
// the same answer.
const (
	CodeBadRequest           Code = "bad_request"            // malformed JSON or missing fields
	CodeInvalidMessage       Code = "invalid_message"        // empty or oversized text, bad client_msg_id
	CodeUnauthorized         Code = "unauthorized"           // no valid session
	CodeForbidden            Code = "forbidden"              // authenticated but not allowed
	CodeNotAMember           Code = "not_a_member"           // the user is not a member of the chat
	CodeChatNotFound         Code = "chat_not_found"         // no such chat
	CodeNotFound             Code = "not_found"              // no such resource
	CodeConflict             Code = "conflict"               // a unique value is taken
	CodeUsernameTaken        Code = "username_taken"         // registration with a taken username
	CodeInvalidInput         Code = "invalid_input"          // a field failed validation
	CodeBadCredentials       Code = "bad_credentials"        // unknown user or wrong password
	CodeFrameTooLarge        Code = "frame_too_large"        // a websocket frame over MaxFrameBytes
	CodeRequestTooLarge      Code = "request_too_large"      // an HTTP request body over the limit
	CodeNameTaken            Code = "name_taken"             // a chat name is taken (regardless of letter case)
	CodeUnknownUser          Code = "unknown_user"           // a username that does not exist
	CodeDuplicateMember      Code = "duplicate_member"       // the same member listed twice
	CodeNotCreator           Code = "not_creator"            // only the chat's creator may do this
	CodeCSRF                 Code = "csrf_rejected"          // a cookie-authenticated change from a foreign origin
	CodeUnsupportedMediaType Code = "unsupported_media_type" // an HTTP body that is not JSON
	CodeMessageNotFound      Code = "message_not_found"      // an edit or delete of a sequence that is no message of the chat
	CodeNotSender            Code = "not_sender"             // only a message's sender may edit or delete it
	CodeMessageDeleted       Code = "message_deleted"        // an edit or delete of a message already deleted
)

// Temporary errors: the server could not serve the request now. The same
// request may be retried later (with the same client_msg_id for sends, so it
// is never stored twice).
const (
	CodeUnavailable Code = "unavailable"  // a backing service did not answer in time
	CodeInternal    Code = "internal"     // an unexpected server error
	CodeRateLimited Code = "rate_limited" // too many requests; slow down
)

// Retryable reports whether a request that failed with c may be retried
// unchanged.
func (c Code) Retryable() bool {
	switch c {
	case CodeUnavailable, CodeInternal, CodeRateLimited:
		return true
	}
	return false
}

// Websocket close codes, in the application range 4000-4999. The range
// tells the client what to do:
//
//	4000-4099: reconnect (to any gateway replica, after a jittered backoff)
//	           and resume from the last sequence seen in each chat.
//	4100-4199: do not reconnect until the cause is fixed (log in again,
//	           fix the client).
//
// Codes are append-only.
const (
	CloseGoingAway    = 4000 // the gateway is shutting down; reconnect elsewhere
	CloseSlowConsumer = 4001 // the client did not read fast enough; resume
	CloseServerError  = 4002 // an internal error; reconnect and resume
	CloseRateLimited  = 4003 // too many requests; reconnect later and resume

	CloseUnauthorized  = 4100 // the session is missing, expired or revoked
	CloseProtocolError = 4101 // the client broke the protocol repeatedly
)

// CloseShouldReconnect reports whether a client that received close code
// code should reconnect and resume.
func CloseShouldReconnect(code int) bool {
	return code >= 4000 && code < 4100
}
