// Package natsbus is the request/reply layer between services on NATS:
// JSON payloads in the busapi envelope, a timeout on every request, and the
// OpenTelemetry trace context carried in NATS headers both ways.
package natsbus

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"sync"
	"time"

	"github.com/nats-io/nats.go"
	"go.opentelemetry.io/otel/attribute"
	"go.opentelemetry.io/otel/codes"
	"go.opentelemetry.io/otel/trace"

	"github.com/communications/communications/libs/busapi"
	"github.com/communications/communications/libs/config"
	"github.com/communications/communications/libs/protocol"
	"github.com/communications/communications/libs/telemetry"
)

// DefaultTimeout bounds a request whose context has no earlier deadline.
const DefaultTimeout = 5 * time.Second

// Connect dials NATS with the options every service uses: a client name,
// unlimited reconnects with a bounded buffer, and logging of connection
// changes.
func Connect(url, name string, logger *slog.Logger) (*nats.Conn, error) {
	nc, err := nats.Connect(url,
		nats.Name(name),
		nats.MaxReconnects(-1),
		nats.ReconnectWait(250*time.Millisecond),
		nats.ReconnectBufSize(8<<20),
		nats.DisconnectErrHandler(func(_ *nats.Conn, err error) {
			if err != nil {
				logger.Warn("nats disconnected", "err", err)
			}
		}),
		nats.ReconnectHandler(func(c *nats.Conn) { logger.Info("nats reconnected", "url", c.ConnectedUrlRedacted()) }),
		nats.ErrorHandler(func(_ *nats.Conn, sub *nats.Subscription, err error) {
			subj := ""
			if sub != nil {
				subj = sub.Subject
			}
			logger.Error("nats async error", "subject", subj, "err", err)
		}),
	)
	if err != nil {
		return nil, fmt.Errorf("connect nats %s: %w", config.Redact(url), err)
	}
	return nc, nil
}

// HeaderCarrier adapts nats.Header to the OpenTelemetry TextMapCarrier.
type HeaderCarrier nats.Header

// Get returns the first value of key.
func (c HeaderCarrier) Get(key string) string { return nats.Header(c).Get(key) }

// Set sets key to value.
func (c HeaderCarrier) Set(key, value string) { nats.Header(c).Set(key, value) }

// Keys lists the header keys.
func (c HeaderCarrier) Keys() []string {
	keys := make([]string, 0, len(c))
	for k := range c {
		keys = append(keys, k)
	}
	return keys
}

// Inject writes the trace context of ctx into msg's headers.
func Inject(ctx context.Context, msg *nats.Msg) {
	if msg.Header == nil {
		msg.Header = nats.Header{}
	}
	telemetry.Propagator().Inject(ctx, HeaderCarrier(msg.Header))
}

// Extract returns ctx with the trace context found in msg's headers.
func Extract(ctx context.Context, msg *nats.Msg) context.Context {
	if msg.Header == nil {
		return ctx
	}
	return telemetry.Propagator().Extract(ctx, HeaderCarrier(msg.Header))
}

// Client sends requests.
type Client struct {
	nc      *nats.Conn
	tracer  trace.Tracer
	metrics *Metrics
}

// Option configures a Client or a Server.
type Option func(*options)

type options struct{ metrics *Metrics }

// WithMetrics records the duration and outcome of each request in m.
func WithMetrics(m *Metrics) Option { return func(o *options) { o.metrics = m } }

func collect(opts []Option) options {
	var o options
	for _, f := range opts {
		f(&o)
	}
	return o
}

// NewClient returns a client using nc, creating spans with tp.
func NewClient(nc *nats.Conn, tp trace.TracerProvider, opts ...Option) *Client {
	o := collect(opts)
	return &Client{nc: nc, tracer: tp.Tracer("github.com/communications/communications/libs/natsbus"), metrics: o.metrics}
}

// ErrUnavailable is returned when no service answered in time.
var ErrUnavailable = busapi.Errorf(protocol.CodeUnavailable, "the service did not answer in time")

// Requester sends one request and decodes its reply; *Client is one. The
// adapters that ask another service depend on it, so that their tests can
// answer without a bus.
type Requester interface {
	Request(ctx context.Context, subject string, req, resp any) error
}

var _ Requester = (*Client)(nil)

// Request sends req to subject and decodes the reply's data into resp. A
// coded error in the reply is returned as *busapi.Error; no responder or a
// timeout is returned as ErrUnavailable (wrapped).
func (c *Client) Request(ctx context.Context, subject string, req, resp any) (err error) {
	start := time.Now()
	defer func() { c.metrics.observeRequest(subject, start, err) }()
	span, reply, err := c.roundTrip(ctx, subject, req)
	defer span.End()
	if err != nil {
		return err
	}
	data, err := decodeReply(span, subject, reply)
	if err != nil {
		return err
	}
	if resp != nil && len(data) > 0 {
		if err := json.Unmarshal(data, resp); err != nil {
			return fmt.Errorf("request %s: %w: data: %w", subject, errDecode, err)
		}
	}
	return nil
}

// dataPrefix opens every reply that carries data: Server encodes
// busapi.Reply, whose Error is left out when nil, so its Data comes first.
var dataPrefix = []byte(`{"data":`)

// RequestJSON is Request for a caller that passes the reply's data on as
// it is (the gateway's history pages): it returns the data as the service
// encoded it, without decoding or checking it (it comes from a Server of
// this system, which encoded it). A reply that is not data is decoded as
// Request does.
func (c *Client) RequestJSON(ctx context.Context, subject string, req any) (_ json.RawMessage, err error) {
	start := time.Now()
	defer func() { c.metrics.observeRequest(subject, start, err) }()
	span, reply, err := c.roundTrip(ctx, subject, req)
	defer span.End()
	if err != nil {
		return nil, err
	}
	if bytes.HasPrefix(reply, dataPrefix) && bytes.HasSuffix(reply, []byte("}")) {
		return reply[len(dataPrefix) : len(reply)-1], nil
	}
	return decodeReply(span, subject, reply)
}

// errDecode wraps the errors of replies that do not decode.
var errDecode = errors.New("decode reply")

// decodeReply returns the data of a reply, or its coded error.
func decodeReply(span trace.Span, subject string, reply []byte) (json.RawMessage, error) {
	var env struct {
		Error *busapi.Error   `json:"error"`
		Data  json.RawMessage `json:"data"`
	}
	if err := json.Unmarshal(reply, &env); err != nil {
		return nil, fmt.Errorf("request %s: %w: %w", subject, errDecode, err)
	}
	if env.Error != nil {
		span.SetAttributes(attribute.String("error.code", string(env.Error.Code)))
		return nil, env.Error
	}
	return env.Data, nil
}

// roundTrip sends req to subject and returns the reply's bytes, with the
// request's span, which the caller ends.
func (c *Client) roundTrip(ctx context.Context, subject string, req any) (trace.Span, []byte, error) {
	if _, ok := ctx.Deadline(); !ok {
		var cancel context.CancelFunc
		ctx, cancel = context.WithTimeout(ctx, DefaultTimeout)
		defer cancel()
	}
	ctx, span := c.tracer.Start(ctx, "request "+subject, trace.WithSpanKind(trace.SpanKindClient),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", subject)))

	data, err := json.Marshal(req)
	if err != nil {
		return span, nil, fmt.Errorf("request %s: encode: %w", subject, err)
	}
	msg := nats.NewMsg(subject)
	msg.Data = data
	Inject(ctx, msg)
	reply, err := c.nc.RequestMsgWithContext(ctx, msg)
	if err != nil {
		span.SetStatus(codes.Error, err.Error())
		if errors.Is(err, context.DeadlineExceeded) || errors.Is(err, nats.ErrTimeout) || errors.Is(err, nats.ErrNoResponders) {
			return span, nil, fmt.Errorf("request %s: %w: %w", subject, ErrUnavailable, err)
		}
		return span, nil, fmt.Errorf("request %s: %w", subject, err)
	}
	return span, reply.Data, nil
}

// Handler serves one decoded request. It returns the reply data, or an
// error: a bare *busapi.Error goes to the requester as it is; a *busapi.Error
// wrapped together with a cause is sent and its cause logged; anything else
// is logged and answered with protocol.CodeInternal.
type Handler[Req, Resp any] func(ctx context.Context, req Req) (Resp, error)

// DefaultConcurrency is how many requests one Server handles at once.
const DefaultConcurrency = 64

// Server answers requests. nats.go hands a subscription's messages to one
// goroutine; the server runs each request in a goroutine of its own, at most
// DefaultConcurrency at a time, so that one slow request does not hold up the
// others. When all are busy, further messages wait in the subscription's
// bounded pending buffer.
type Server struct {
	nc      *nats.Conn
	tracer  trace.Tracer
	metrics *Metrics
	logger  *slog.Logger
	timeout time.Duration
	slots   chan struct{}
	running sync.WaitGroup
	// now is the clock of natsbus_handle_duration_seconds (time.Now; a
	// test's clock in tests).
	now func() time.Time

	mu   sync.Mutex
	subs []*nats.Subscription
}

// NewServer returns a server answering on nc. Each request is handled with a
// context bounded by timeout (DefaultTimeout when zero).
func NewServer(nc *nats.Conn, tp trace.TracerProvider, logger *slog.Logger, timeout time.Duration, opts ...Option) *Server {
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	o := collect(opts)
	return &Server{
		nc: nc, tracer: tp.Tracer("github.com/communications/communications/libs/natsbus"), logger: logger, timeout: timeout,
		metrics: o.metrics,
		slots:   make(chan struct{}, DefaultConcurrency),
		now:     time.Now,
	}
}

// Shutdown stops taking requests, lets the requests already received finish
// and answer, and returns when they have or when ctx ends. Call it before
// draining or closing the connection.
func (s *Server) Shutdown(ctx context.Context) error {
	s.mu.Lock()
	subs := s.subs
	s.subs = nil
	s.mu.Unlock()
	for _, sub := range subs {
		if err := sub.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) && !errors.Is(err, nats.ErrBadSubscription) {
			s.logger.Warn("drain subscription", "subject", sub.Subject, "err", err)
		}
	}
	done := make(chan struct{})
	go func() {
		// A drained subscription becomes invalid once every message it
		// had received went to its callback.
		tick := time.NewTicker(5 * time.Millisecond)
		defer tick.Stop()
		for _, sub := range subs {
			for sub.IsValid() {
				select {
				case <-ctx.Done():
					return
				case <-tick.C:
				}
			}
		}
		s.running.Wait()
		close(done)
	}()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("requests still running at shutdown: %w", ctx.Err())
	}
}

// Handle subscribes h to subject in queue group queue. Reply data that
// encoding/json cannot encode is answered with protocol.CodeInternal (and
// logged). The subscription ends when the connection is drained or closed.
func Handle[Req, Resp any](ctx context.Context, s *Server, subject, queue string, h Handler[Req, Resp]) (*nats.Subscription, error) {
	// json.Marshal allocates the reply itself: no pooled buffer.
	return s.subscribe(ctx, subject, queue, false, func(ctx context.Context, data, _ []byte) ([]byte, error) {
		var req Req
		if err := json.Unmarshal(data, &req); err != nil {
			return nil, busapi.Errorf(protocol.CodeBadRequest, "malformed request")
		}
		resp, err := h(ctx, req)
		if err != nil {
			return nil, err
		}
		return json.Marshal(busapi.Reply[any]{Data: resp})
	})
}

// AppendHandler serves one decoded request by appending its reply data,
// encoded as JSON, to dst and returning the extended buffer; or it returns
// an error, as a Handler does. The server sends the data as it is, without
// checking it: a handler must append the data's JSON (returning dst
// unchanged sends an invalid reply, a bug).
type AppendHandler[Req any] func(ctx context.Context, req Req, dst []byte) ([]byte, error)

// HandleAppend is Handle for a handler that encodes its reply data itself
// (a large reply served often: the history service's pages). The reply is
// built in a buffer the server reuses for later requests, so encoding a
// reply allocates nothing.
func HandleAppend[Req any](ctx context.Context, s *Server, subject, queue string, h AppendHandler[Req]) (*nats.Subscription, error) {
	return s.subscribe(ctx, subject, queue, true, func(ctx context.Context, data, dst []byte) ([]byte, error) {
		var req Req
		if err := json.Unmarshal(data, &req); err != nil {
			return nil, busapi.Errorf(protocol.CodeBadRequest, "malformed request")
		}
		dst, err := h(ctx, req, append(dst, dataPrefix...))
		if err != nil {
			return nil, err
		}
		return append(dst, '}'), nil
	})
}

// serveFunc decodes one request and returns the whole reply (a
// busapi.Reply with data), which it may append to buf (empty, or nil when
// the subscription does not pool buffers); or an error to answer.
type serveFunc func(ctx context.Context, req, buf []byte) ([]byte, error)

// replyBufs holds the buffers replies are built in (a *[]byte each). A
// variable so that a test can count what goes into it.
var replyBufs = new(sync.Pool)

// maxPooledReply bounds the buffers kept for reuse: a rare large reply
// does not stay in memory.
const maxPooledReply = 256 << 10

// subscribe serves h on subject in queue group queue; pooled builds the
// replies in buffers from replyBufs.
func (s *Server) subscribe(ctx context.Context, subject, queue string, pooled bool, h serveFunc) (*nats.Subscription, error) {
	sub, err := s.nc.QueueSubscribe(subject, queue, func(msg *nats.Msg) {
		// Received now: the handling time includes the wait for a slot.
		start := s.now()
		s.slots <- struct{}{}
		s.running.Add(1)
		go func() {
			defer func() {
				<-s.slots
				s.running.Done()
			}()
			s.serve(ctx, msg, start, pooled, h)
		}()
	})
	if err != nil {
		return nil, fmt.Errorf("subscribe %s: %w", subject, err)
	}
	s.mu.Lock()
	s.subs = append(s.subs, sub)
	s.mu.Unlock()
	return sub, nil
}

// serve handles msg, received at start, and answers it.
func (s *Server) serve(base context.Context, msg *nats.Msg, start time.Time, pooled bool, h serveFunc) {
	outcome := OutcomeOK
	defer func() { s.metrics.observeHandled(msg.Subject, s.now().Sub(start), outcome) }()
	ctx := Extract(base, msg)
	ctx, cancel := context.WithTimeout(ctx, s.timeout)
	defer cancel()
	ctx, span := s.tracer.Start(ctx, "handle "+msg.Subject, trace.WithSpanKind(trace.SpanKindServer),
		trace.WithAttributes(attribute.String("messaging.system", "nats"), attribute.String("messaging.destination.name", msg.Subject)))
	defer span.End()

	var bufp *[]byte
	var buf []byte
	if pooled {
		if bufp, _ = replyBufs.Get().(*[]byte); bufp == nil {
			bufp = new([]byte)
		}
		buf = (*bufp)[:0]
	}
	reply, err := h(ctx, msg.Data, buf)
	if err != nil {
		be, ok := errors.AsType[*busapi.Error](err)
		outcome = OutcomeError
		if !ok || error(be) != err {
			// Not a plain client error: something failed inside.
			s.logger.ErrorContext(ctx, "request failed", "subject", msg.Subject, "err", err)
			span.SetStatus(codes.Error, err.Error())
			outcome = OutcomeInternal
		}
		if !ok {
			be = busapi.Errorf(protocol.CodeInternal, "internal error")
		}
		span.SetAttributes(attribute.String("error.code", string(be.Code)))
		reply, err = json.Marshal(busapi.Reply[struct{}]{Error: be})
		if err != nil {
			s.logger.ErrorContext(ctx, "encode reply", "subject", msg.Subject, "err", err)
			return
		}
	}
	out := nats.NewMsg(msg.Reply)
	out.Data = reply
	Inject(ctx, out)
	if err := msg.RespondMsg(out); err != nil {
		s.logger.WarnContext(ctx, "respond", "subject", msg.Subject, "err", err)
	}
	if !pooled {
		return
	}
	// The connection copied the reply into its own buffer, so the buffer
	// serves the next request (TestHandleAppend's concurrent replies check
	// that no two share one); keep the larger of the two.
	if cap(reply) > cap(*bufp) {
		*bufp = reply
	}
	if cap(*bufp) <= maxPooledReply {
		replyBufs.Put(bufp)
	}
}

// Check returns a readiness check that passes while nc is connected.
func Check(nc *nats.Conn) func(context.Context) error {
	return func(context.Context) error {
		if !nc.IsConnected() {
			return fmt.Errorf("nats: %s", nc.Status())
		}
		return nil
	}
}

// Drain stops nc's subscriptions from taking new messages, lets handlers in
// flight finish and flushes what they published, then closes nc. It returns
// when nc is closed or ctx ends (then nc is closed at once).
func Drain(ctx context.Context, nc *nats.Conn) error {
	if err := nc.Drain(); err != nil && !errors.Is(err, nats.ErrConnectionClosed) {
		nc.Close()
		return fmt.Errorf("drain nats: %w", err)
	}
	tick := time.NewTicker(10 * time.Millisecond)
	defer tick.Stop()
	for !nc.IsClosed() {
		select {
		case <-ctx.Done():
			nc.Close()
			return fmt.Errorf("drain nats: %w", ctx.Err())
		case <-tick.C:
		}
	}
	return nil
}
