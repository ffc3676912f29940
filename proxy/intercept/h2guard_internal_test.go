package intercept

import (
	"bytes"
	"testing"

	"golang.org/x/net/http2"
)

// The server's SETTINGS is patched however its bytes are split across
// writes, its other settings and the frames after it left as they were,
// and the bytes the server handed in never changed.
func TestH2PatchSettingsSplit(t *testing.T) {
	var buf bytes.Buffer
	fr := http2.NewFramer(&buf, nil)
	fr.WriteSettings(
		http2.Setting{ID: http2.SettingMaxConcurrentStreams, Val: 250},
		http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20},
		http2.Setting{ID: http2.SettingInitialWindowSize, Val: 1 << 20},
	)
	fr.WriteWindowUpdate(0, 1<<20)
	// A later SETTINGS is not the first frame: left alone.
	fr.WriteSettings(http2.Setting{ID: http2.SettingMaxFrameSize, Val: 1 << 20})
	in := buf.Bytes()
	for _, size := range []int{1, 2, 5, 7, len(in)} {
		var f h2Frames
		var out []byte
		orig := bytes.Clone(in)
		for b := in; len(b) > 0; {
			n := min(size, len(b))
			out = append(out, f.patchSettings(b[:n])...)
			b = b[n:]
		}
		if !bytes.Equal(in, orig) {
			t.Fatalf("writes of %d: the server's bytes changed", size)
		}
		rd := http2.NewFramer(nil, bytes.NewReader(out))
		var got []uint32
		for {
			fm, err := rd.ReadFrame()
			if err != nil {
				break
			}
			if s, ok := fm.(*http2.SettingsFrame); ok {
				v, _ := s.Value(http2.SettingMaxFrameSize)
				got = append(got, v)
				if n, _ := s.Value(http2.SettingMaxConcurrentStreams); len(got) == 1 && n != h2MaxConcurrentStreams {
					t.Fatalf("writes of %d: max concurrent streams %d", size, n)
				}
			}
		}
		if len(got) != 2 || got[0] != 16384 || got[1] != 1<<20 {
			t.Fatalf("writes of %d: SETTINGS_MAX_FRAME_SIZE %v, want [16384 %d]", size, got, 1<<20)
		}
	}
}
