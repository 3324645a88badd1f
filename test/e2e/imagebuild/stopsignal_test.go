package imagebuild_test

import (
	"bytes"
	"encoding/json"
	"testing"

	"github.com/mineshim/mine/test/e2e/imagebuild"
)

// imageConfig returns the config blob of the image in an OCI layout tar.
func imageConfig(t *testing.T, layout []byte) []byte {
	t.Helper()
	members, _ := readTar(t, layout)
	var idx struct {
		Manifests []descriptor `json:"manifests"`
	}
	if err := json.Unmarshal(members["index.json"].data, &idx); err != nil || len(idx.Manifests) != 1 {
		t.Fatalf("index.json %s: %v", members["index.json"].data, err)
	}
	var man struct {
		Config descriptor `json:"config"`
	}
	if err := json.Unmarshal(blob(t, members, idx.Manifests[0]), &man); err != nil {
		t.Fatalf("manifest: %v", err)
	}
	return blob(t, members, man.Config)
}

func TestStopSignal(t *testing.T) {
	bb, _ := fakeBusybox(t)
	for _, tc := range []struct {
		signal string
		raw    bool // whether the config names a StopSignal at all
	}{
		{signal: "SIGUSR1", raw: true},
		{signal: "", raw: false},
	} {
		var buf bytes.Buffer
		if _, err := imagebuild.Write(&buf, imagebuild.Options{Busybox: bb, Applets: []string{"sh"}, StopSignal: tc.signal}); err != nil {
			t.Fatal(err)
		}
		data := imageConfig(t, buf.Bytes())
		var cfg struct {
			Config map[string]json.RawMessage `json:"config"`
		}
		if err := json.Unmarshal(data, &cfg); err != nil {
			t.Fatalf("config: %v", err)
		}
		raw, ok := cfg.Config["StopSignal"]
		if ok != tc.raw {
			t.Errorf("StopSignal %q: config %s", tc.signal, data)
			continue
		}
		var got string
		if ok {
			if err := json.Unmarshal(raw, &got); err != nil || got != tc.signal {
				t.Errorf("StopSignal %q: config says %s (%v)", tc.signal, raw, err)
			}
		}
	}
}
