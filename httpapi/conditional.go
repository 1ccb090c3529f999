package httpapi

import (
	"net/http"
	"strconv"
	"strings"

	"github.com/tokenledger/tokenledger/app"
	"github.com/tokenledger/tokenledger/domain"
)

// A token's ETag is its version, quoted: a client sends it back as If-Match
// to change the token only as it read it.
func etag(version uint64) string { return `"` + strconv.FormatUint(version, 10) + `"` }

// ifMatch reads If-Match: the version a command applies to (app.IfVersion),
// given as the token's ETag ("3") or its bare version (3). Absent, or "*", the
// command applies to any version.
func ifMatch(r *http.Request) ([]app.CommandOption, error) {
	values := r.Header.Values("If-Match")
	if len(values) == 0 {
		return nil, nil
	}
	v := strings.TrimSpace(values[0])
	if len(values) == 1 && v == "*" {
		return nil, nil
	}
	if len(v) >= 2 && v[0] == '"' && v[len(v)-1] == '"' {
		v = v[1 : len(v)-1]
	}
	n, err := strconv.ParseUint(v, 10, 64)
	if len(values) > 1 || err != nil || n == 0 {
		return nil, domain.Invalid("If-Match", `one version of the token as read, its ETag (such as "3"), or *`)
	}
	return []app.CommandOption{app.IfVersion(n)}, nil
}
