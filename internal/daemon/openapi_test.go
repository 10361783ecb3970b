package daemon

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/getkin/kin-openapi/openapi3"
	"github.com/getkin/kin-openapi/openapi3filter"
	"github.com/getkin/kin-openapi/routers/legacy"
	"github.com/kpf-dev/kpf/internal/config"
	"github.com/kpf-dev/kpf/internal/daemon/api"
	"github.com/kpf-dev/kpf/internal/identity"
	"github.com/kpf-dev/kpf/internal/spec"
)

const openAPIFile = "../../docs/api/openapi.yaml"

func loadOpenAPI(t *testing.T) *openapi3.T {
	t.Helper()
	doc, err := openapi3.NewLoader().LoadFromFile(openAPIFile)
	if err != nil {
		t.Fatal(err)
	}
	if err := doc.Validate(context.Background()); err != nil {
		t.Fatalf("%s is not a valid OpenAPI 3 document: %v", openAPIFile, err)
	}
	return doc
}

// The document and the handlers' route table are the same set of paths
// and methods: neither can grow without the other.
func TestOpenAPIMatchesRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	var documented, served []string
	for path, item := range doc.Paths.Map() {
		for method := range item.Operations() {
			documented = append(documented, method+" "+path)
		}
	}
	for _, rt := range Routes() {
		served = append(served, rt.Method+" "+rt.Path)
	}
	slices.Sort(documented)
	slices.Sort(served)
	if !slices.Equal(documented, served) {
		t.Fatalf("the routes and %s differ:\nserved:     %v\ndocumented: %v", openAPIFile, served, documented)
	}
}

// Each operation takes the query parameters the document gives it, and no
// other (the handler refuses any other); a yes-or-no one takes the values
// the document lists.
func TestOpenAPIQueryParametersMatchRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	for _, rt := range Routes() {
		item := doc.Paths.Find(rt.Path)
		op := item.GetOperation(rt.Method)
		if op == nil {
			t.Errorf("%s %s: not documented", rt.Method, rt.Path)
			continue
		}
		var documented []string
		// The path's own parameters, then the operation's.
		for _, p := range append(slices.Clone(item.Parameters), op.Parameters...) {
			if p.Value.In != openapi3.ParameterInQuery {
				continue
			}
			documented = append(documented, p.Value.Name)
			if slices.Contains(BoolParams, p.Value.Name) {
				var enum []string
				for _, v := range p.Value.Schema.Value.Enum {
					enum = append(enum, fmt.Sprint(v))
				}
				if !slices.Equal(enum, BoolValues) {
					t.Errorf("%s %s: %s takes %v, documented %v", rt.Method, rt.Path, p.Value.Name, BoolValues, enum)
				}
			}
		}
		served := slices.Clone(rt.Query)
		slices.Sort(documented)
		slices.Sort(served)
		if !slices.Equal(documented, served) {
			t.Errorf("%s %s: takes query parameters %v, documented %v", rt.Method, rt.Path, served, documented)
		}
	}
}

// Every operation, made for real against a daemon, is a request the
// document allows and gets an answer the document describes.
func TestOpenAPIRequestsAndAnswers(t *testing.T) {
	doc := loadOpenAPI(t)
	// An event stream is text to the document (its events are checked in
	// v1_test.go).
	openapi3filter.RegisterBodyDecoder("text/event-stream", openapi3filter.PlainBodyDecoder)
	router, err := legacy.NewRouter(doc)
	if err != nil {
		t.Fatal(err)
	}
	s := &Server{Log: discard, Opener: (&opened{byFwd: map[string]openCall{}}).opener, Describe: describeByContext,
		Doctor: func(_ context.Context, _ identity.Identity, fw config.Forward, _ spec.Settings) api.DoctorResult {
			return api.DoctorResult{OK: true, Checks: []api.Check{{Step: "kubeconfig", Status: "ok", Summary: "fine"}}}
		}}
	c := serve(t, s)
	dir := t.TempDir()
	file := writeFile(t, dir, "kpf.yaml", "forwards:\n  - name: db\n    target: svc/db\n    ports: [5432]\nproxies:\n  - name: px\n    listen: 127.0.0.1:18099\n")
	apply, _ := json.Marshal(api.ApplyRequest{File: file, Identity: as("dev", "alice"), Settings: spec.Defaults()})
	start, _ := json.Marshal(startReq("svc/web", "8080"))
	names, _ := json.Marshal(api.NamesRequest{Names: []string{"db"}, File: file})
	f := url.QueryEscape(file)
	type call struct {
		method, path string
		body         []byte
		want         int
	}
	calls := []call{
		{"POST", "/v1/apply", apply, 200},
		{"GET", "/v1/status", nil, 200},
		{"GET", "/v1/status?file=" + f, nil, 200},
		{"GET", "/v1/files", nil, 200},
		{"POST", "/v1/forwards", start, 201},
		{"POST", "/v1/forwards", []byte(`{"target":"svc/web","ports":["http"],"address":"10.0.0.1","identity":{},"settings":{}}`), 400},
		{"GET", "/v1/forwards", nil, 200},
		{"GET", "/v1/forwards?file=" + f, nil, 200},
		{"GET", "/v1/forwards/db", nil, 200},
		{"GET", "/v1/forwards/nope", nil, 404},
		{"GET", "/v1/forwards/db/doctor?file=" + f, nil, 200},
		{"GET", "/v1/forwards/db/logs?lines=10", nil, 200},
		{"GET", "/v1/forwards/web/httplog?lines=10", nil, 404}, // started without httpLog
		{"GET", "/v1/proxies", nil, 200},
		{"GET", "/v1/proxies/px", nil, 200},
		{"GET", "/v1/logs?lines=5", nil, 200},
		{"POST", "/v1/forwards/db/restart", nil, 200},
		{"POST", "/v1/restart", names, 200},
		{"POST", "/v1/wait?timeout=100ms&file=" + f, nil, 503},
		{"GET", "/v1/events?counters=1", nil, 200},
		{"GET", "/v1/events?counters=yes", nil, 400},
		{"GET", "/v1/status?nope=1", nil, 400},
		{"POST", "/v1/wait?timeout=soon", nil, 400},
		{"DELETE", "/v1/forwards/web", nil, 200},
		{"POST", "/v1/down", names, 200},
	}
	seen := map[string]bool{}
	for _, cl := range calls {
		t.Run(cl.method+" "+cl.path, func(t *testing.T) {
			ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
			defer cancel()
			req, _ := http.NewRequestWithContext(ctx, cl.method, "http://kpf"+cl.path, bytes.NewReader(cl.body))
			if cl.body != nil {
				req.Header.Set("Content-Type", "application/json")
			}
			route, params, err := router.FindRoute(req)
			if err != nil {
				t.Fatalf("not in the document: %v", err)
			}
			seen[cl.method+" "+route.Path] = true
			in := &openapi3filter.RequestValidationInput{Request: req, PathParams: params, Route: route,
				Options: &openapi3filter.Options{AuthenticationFunc: openapi3filter.NoopAuthenticationFunc}}
			if err := openapi3filter.ValidateRequest(ctx, in); err != nil && cl.want/100 == 2 {
				t.Fatalf("the request does not follow the document: %v", err)
			}
			req, _ = http.NewRequestWithContext(ctx, cl.method, "http://kpf"+cl.path, bytes.NewReader(cl.body))
			resp, err := c.http.Do(req)
			if err != nil {
				t.Fatal(err)
			}
			defer resp.Body.Close()
			var body []byte
			if strings.HasPrefix(resp.Header.Get("Content-Type"), "text/event-stream") {
				// Read up to the first counters event, then hang up.
				sc := bufio.NewScanner(resp.Body)
				var b strings.Builder
				for sc.Scan() && !strings.HasPrefix(sc.Text(), "data:") {
					b.WriteString(sc.Text() + "\n")
				}
				b.WriteString(sc.Text() + "\n\n")
				body = []byte(b.String())
			} else {
				body, _ = io.ReadAll(resp.Body)
			}
			if resp.StatusCode != cl.want {
				t.Fatalf("status %d, want %d: %s", resp.StatusCode, cl.want, body)
			}
			out := &openapi3filter.ResponseValidationInput{RequestValidationInput: in, Status: resp.StatusCode, Header: resp.Header,
				Options: &openapi3filter.Options{IncludeResponseStatus: true}}
			out.SetBodyBytes(body)
			if err := openapi3filter.ValidateResponse(ctx, out); err != nil {
				t.Fatalf("the answer does not follow the document: %v\n%s", err, body)
			}
		})
	}
	for _, rt := range Routes() {
		if !seen[rt.Method+" "+rt.Path] {
			t.Errorf("no call of %s %s", rt.Method, rt.Path)
		}
	}
}
