package daemon

import (
	"encoding/json"
	"reflect"
	"testing"
	"time"

	"github.com/kpf-dev/kpf/internal/manager"
)

// The API's forward row says in JSON exactly what the manager's row said
// when it was served as it was (kpf status --json users and the e2e tests
// parse these names): every field of manager.Row, set to a value of its
// own, comes out under the same name with the same value. A field the
// manager gains fails this test until the API has it too.
func TestForwardJSONIsTheRowsJSON(t *testing.T) {
	var row manager.Row
	v := reflect.ValueOf(&row).Elem()
	for i := range v.NumField() {
		f := v.Field(i)
		switch f.Kind() {
		case reflect.String:
			f.SetString(v.Type().Field(i).Name + "-value")
		case reflect.Int, reflect.Int64:
			f.SetInt(int64(i + 1))
		case reflect.Struct:
			if _, ok := f.Interface().(time.Time); !ok {
				t.Fatalf("manager.Row.%s is a struct: teach this test (and api.Forward) about it", v.Type().Field(i).Name)
			}
			f.Set(reflect.ValueOf(time.Date(2026, 12, 7, 17, 0, i, 0, time.UTC)))
		case reflect.Slice:
			f.Set(reflect.ValueOf([]string{v.Type().Field(i).Name + "-a", "b"}))
		default:
			t.Fatalf("manager.Row.%s is a %s: teach this test (and api.Forward) about it", v.Type().Field(i).Name, f.Kind())
		}
	}
	want, err := json.Marshal(row)
	if err != nil {
		t.Fatal(err)
	}
	got, err := json.Marshal(ForwardOf(row))
	if err != nil {
		t.Fatal(err)
	}
	var w, g map[string]any
	json.Unmarshal(want, &w)
	json.Unmarshal(got, &g)
	if !reflect.DeepEqual(w, g) {
		t.Fatalf("api.Forward JSON\n%s\nmanager.Row JSON\n%s", got, want)
	}
}
