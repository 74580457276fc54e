package httpapi

import (
	"context"
	"io"
	"path/filepath"
	"regexp"
	"sort"
	"strings"
	"testing"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/gin-gonic/gin"
	"github.com/google/go-cmp/cmp"
	"go.opentelemetry.io/otel/propagation"
	"go.opentelemetry.io/otel/trace/noop"

	"github.com/communications/communications/libs/telemetry"
)

// TestOpenAPIMatchesRoutes: docs/openapi.yaml is a valid OpenAPI 3 document
// and describes exactly the routes the gateway registers.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	t.Parallel()
	loader := openapi3.NewLoader()
	doc, err := loader.LoadFromFile(filepath.Join("..", "..", "..", "..", "docs", "openapi.yaml"))
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("docs/openapi.yaml is not valid: %v", err)
	}
	var documented []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}

	gin.SetMode(gin.ReleaseMode)
	engine := gin.New()
	New(telemetry.NewLogger(io.Discard, 0), Config{}, nil, nil, Limits{}, nil, noop.NewTracerProvider(), propagation.TraceContext{}).Routes(engine)
	param := regexp.MustCompile(`:([a-z_]+)`)
	var served []string
	for _, r := range engine.Routes() {
		served = append(served, r.Method+" "+param.ReplaceAllString(r.Path, "{$1}"))
	}
	sort.Strings(documented)
	sort.Strings(served)
	if diff := cmp.Diff(served, documented); diff != "" {
		t.Errorf("routes (-served +documented):\n%s", diff)
	}
	for _, r := range served {
		if !strings.HasPrefix(strings.Fields(r)[1], "/") {
			t.Errorf("odd route %q", r)
		}
	}
}
