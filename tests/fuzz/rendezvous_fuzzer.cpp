// libFuzzer target for the rendezvous server's protocol (the state machine the event loop
// drives): any bytes from up to four connections, cut anywhere, interleaved with clock ticks,
// flushes and closes, must give replies or errors, never a crash, and never break the memory caps.
#include <cstddef>
#include <cstdint>
#include <cstdlib>

#include "../../src/transport/rendezvous_core.h"

using namespace weightcast::transport;  // NOLINT

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  RendezvousLimits lim;
  lim.max_key = 32;
  lim.max_value = 256;
  lim.max_clients = 3;
  lim.max_unauthenticated = 2;
  lim.max_keys = 8;
  lim.max_store_bytes = 1024;
  lim.max_buffered_bytes = 512;
  lim.handshake_timeout = std::chrono::milliseconds(50);
  static const std::string kJob = "job";
  static const std::string kPeer = peer_token(kJob, "trainer/1");
  rdv::Core core(kJob, lim);
  auto now = rdv::Clock::time_point{} + std::chrono::hours(1);
  bool open[4] = {};
  size_t pos = 0;
  while (pos < size) {
    const uint8_t cmd = data[pos++];
    const uint64_t id = 10 + (cmd & 3);
    switch ((cmd >> 2) & 7) {
      case 0:  // open, optionally saying hello with the job or a peer token
      case 1: {
        if (open[cmd & 3]) break;
        core.open(id, now);
        open[cmd & 3] = true;
        if (cmd & 0x20) {
          rdv::Bytes h{'H'};
          rdv::put_field(h, rdv::bytes(cmd & 0x40 ? kPeer : kJob));
          rdv::Bytes f;
          rdv::put32(f, static_cast<uint32_t>(h.size()));
          f.insert(f.end(), h.begin(), h.end());
          core.input(id, f, now);
        }
        break;
      }
      case 2:
      case 3:
      case 4: {  // bytes from the fuzzer, as much as the server lets in
        const size_t n = std::min<size_t>(size - pos, 1 + (cmd >> 5) * 9);
        if (open[cmd & 3]) core.input(id, {data + pos, n}, now);
        pos += n;
        break;
      }
      case 5:  // the client reads its replies
        if (const auto* out = core.output(id)) {
          size_t n = 0;
          for (const auto& [buf, off] : *out) n += buf->size() - off;
          core.sent(id, n / (1 + (cmd >> 5)), now);
        }
        break;
      case 6:
        now += std::chrono::milliseconds(1 << (cmd >> 5));
        core.tick(now);
        break;
      case 7:
        core.close(id);
        open[cmd & 3] = false;
        break;
    }
    (void)core.take_dirty();
    if (core.stored_bytes() > lim.max_store_bytes ||
        core.buffered_bytes() > lim.max_buffered_bytes || core.connections() > 4)
      std::abort();
  }
  return 0;
}
