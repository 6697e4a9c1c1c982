// The same-host backend's own rules, on two domains of this process (the fabric suite runs it
// between processes: WC_TEST_BACKEND=ipc): what a key may name, what an address must be, and
// immediates that wait for a full lane instead of being lost.
#include <gtest/gtest.h>

#include <cstring>
#include <vector>

#include "weightcast/transport/domain.h"
#include "weightcast/transport/nic_group.h"

namespace weightcast::transport {
namespace {

std::unique_ptr<Domain> open_ipc() {
  DomainConfig c;
  c.backend = "ipc";
  auto d = open_domain(c);
  EXPECT_TRUE(d) << d.status().message();
  return d ? std::move(d).value() : nullptr;
}

// Polls both until `want` completions of the writer and `imms` immediates of the reader came.
void pump(Domain& writer, Domain& reader, size_t want, size_t imms, std::vector<Completion>& done,
          std::vector<uint32_t>& got) {
  std::vector<Completion> c(64);
  for (int spins = 0; (done.size() < want || got.size() < imms) && spins < 1000000; ++spins) {
    auto n = writer.poll(c);
    ASSERT_TRUE(n);
    done.insert(done.end(), c.begin(), c.begin() + static_cast<long>(*n));
    auto m = reader.poll(c);
    ASSERT_TRUE(m);
    for (size_t i = 0; i < *m; ++i)
      if (c[i].kind == Completion::Kind::kImm) got.push_back(c[i].imm);
  }
}

TEST(Ipc, WritesLandAndTheirImmediatesFollow) {
  auto a = open_ipc(), b = open_ipc();
  ASSERT_TRUE(a && b);
  EXPECT_EQ(a->caps().backend, "ipc");
  std::vector<uint8_t> src(4096), dst(4096, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 1);
  auto s = a->register_memory(src.data(), src.size(), MemKind::kHost);
  auto d = b->register_memory(dst.data(), dst.size(), MemKind::kHost);
  ASSERT_TRUE(s && d);
  auto peer = a->connect(b->address());
  ASSERT_TRUE(peer) << peer.status().message();
  EXPECT_EQ(*a->connect(b->address()), *peer);  // connecting again keeps the connection
  WriteOp op{1, &*s, 100, *peer, d->remote, 200, 1000, true, 0xABCD};
  PostResult r = a->post({&op, 1});
  ASSERT_TRUE(r.error.is_ok()) << r.error.message();
  ASSERT_EQ(r.taken, 1u);
  std::vector<Completion> done;
  std::vector<uint32_t> got;
  pump(*a, *b, 1, 1, done, got);
  ASSERT_EQ(done.size(), 1u);
  EXPECT_EQ(done[0].kind, Completion::Kind::kWriteDone);
  EXPECT_EQ(done[0].id, 1u);
  ASSERT_EQ(got, std::vector<uint32_t>{0xABCD});
  EXPECT_EQ(std::memcmp(dst.data() + 200, src.data() + 100, 1000), 0);
  EXPECT_EQ(dst[199], 0);
  EXPECT_EQ(dst[1200], 0);
}

TEST(Ipc, KeysOfDeregisteredRegionsAndWritesPastTheRegionAreRefused) {
  auto a = open_ipc(), b = open_ipc();
  ASSERT_TRUE(a && b);
  std::vector<uint8_t> src(256, 1), dst(256, 0);
  auto s = a->register_memory(src.data(), src.size(), MemKind::kHost);
  auto d = b->register_memory(dst.data(), dst.size(), MemKind::kHost);
  ASSERT_TRUE(s && d);
  auto peer = a->connect(b->address());
  ASSERT_TRUE(peer);
  WriteOp past{1, &*s, 0, *peer, d->remote, 200, 100, true, 1};
  PostResult r = a->post({&past, 1});
  EXPECT_EQ(r.taken, 0u);
  EXPECT_NE(r.error.message().find("runs past"), std::string::npos) << r.error.message();
  WriteOp forged = past;
  forged.dst_off = 0;
  forged.dst.key ^= 1ull << 40;  // another generation of the same slot
  r = a->post({&forged, 1});
  EXPECT_EQ(r.taken, 0u);
  EXPECT_NE(r.error.message().find("no longer has the region"), std::string::npos)
      << r.error.message();
  ASSERT_TRUE(b->deregister(*d));
  WriteOp stale = past;
  stale.dst_off = 0;
  r = a->post({&stale, 1});
  EXPECT_EQ(r.taken, 0u);
  EXPECT_NE(r.error.message().find("no longer has the region"), std::string::npos)
      << r.error.message();
  EXPECT_EQ(dst, std::vector<uint8_t>(256, 0));
}

TEST(Ipc, AddressesOfOtherHostsAndOtherBackendsAreRefused) {
  auto a = open_ipc(), b = open_ipc();
  ASSERT_TRUE(a && b);
  const std::vector<uint8_t> addr = b->address();
  std::string other(addr.begin(), addr.end());
  const size_t bar = other.find('|');
  other[bar + 1] = other[bar + 1] == 'x' ? 'y' : 'x';  // another boot id
  auto c = a->connect(std::vector<uint8_t>(other.begin(), other.end()));
  ASSERT_FALSE(c);
  EXPECT_NE(c.status().message().find("another host"), std::string::npos) << c.status().message();
  const std::string junk = "192.168.0.1:7000";
  c = a->connect(std::vector<uint8_t>(junk.begin(), junk.end()));
  ASSERT_FALSE(c);
  EXPECT_NE(c.status().message().find("not an ipc address"), std::string::npos);
  std::string wrong_nonce(addr.begin(), addr.end());
  wrong_nonce.back() = wrong_nonce.back() == '1' ? '2' : '1';
  c = a->connect(std::vector<uint8_t>(wrong_nonce.begin(), wrong_nonce.end()));
  ASSERT_FALSE(c);
  EXPECT_NE(c.status().message().find("not the ipc segment"), std::string::npos)
      << c.status().message();
}

// Device windows (a kernel writes a peer's GPU tensor itself, then an in-place write carries
// the immediate) exist only for GPU regions of ipc peers: host regions, unknown peers and the
// NIC backends say so, and an in-place write into host memory or past a region is refused.
TEST(Ipc, DeviceWindowsAndInPlaceWritesNeedAPeersGpuRegion) {
  auto a = open_ipc(), b = open_ipc();
  ASSERT_TRUE(a && b);
  std::vector<uint8_t> src(64), dst(4096, 0);
  auto s = a->register_memory(src.data(), src.size(), MemKind::kHost);
  auto d = b->register_memory(dst.data(), dst.size(), MemKind::kHost);
  ASSERT_TRUE(s && d);
  auto peer = a->connect(b->address());
  ASSERT_TRUE(peer);
  auto w = a->device_window(*peer, d->remote, 0, 16);
  ASSERT_FALSE(w);
  EXPECT_NE(w.status().message().find("is host memory: no device window"), std::string::npos)
      << w.status().message();
  EXPECT_NE(a->device_window(*peer + 7, d->remote, 0, 16).status().message().find("unknown peer"),
            std::string::npos);
  WriteOp op{1, nullptr, 0, *peer, d->remote, 0, 16, true, 0x1234};
  op.in_place = true;
  PostResult r = a->post({&op, 1});
  EXPECT_EQ(r.taken, 0u);
  EXPECT_NE(r.error.message().find("in-place write 1 into host memory"), std::string::npos)
      << r.error.message();
  // The NIC backends have no windows and refuse in-place writes by name.
  DomainConfig fc;
  fc.backend = "fabric";
  fc.provider = "tcp";
  fc.address = "127.0.0.1";
  auto f = open_domain(fc);
  ASSERT_TRUE(f) << f.status().message();
  auto g = open_domain(fc);
  ASSERT_TRUE(g) << g.status().message();
  auto fs = (*f)->register_memory(src.data(), src.size(), MemKind::kHost);
  auto fd = (*g)->register_memory(dst.data(), dst.size(), MemKind::kHost);
  ASSERT_TRUE(fs && fd);
  auto fp = (*f)->connect((*g)->address());
  ASSERT_TRUE(fp) << fp.status().message();
  EXPECT_NE((*f)->device_window(*fp, fd->remote, 0, 16)
                .status()
                .message()
                .find("the fabric backend writes through its NICs"),
            std::string::npos);
  WriteOp fo{2, &*fs, 0, *fp, fd->remote, 0, 16, true, 0x1234};
  fo.in_place = true;
  PostResult fr = (*f)->post({&fo, 1});
  EXPECT_EQ(fr.taken, 0u);
  EXPECT_NE(fr.error.message().find("is in place, which needs the ipc backend"), std::string::npos)
      << fr.error.message();
}

TEST(Ipc, ImmediatesWaitForAFullLaneInsteadOfBeingLost) {
  auto a = open_ipc(), b = open_ipc();
  ASSERT_TRUE(a && b);
  std::vector<uint8_t> src(8, 3), dst(8, 0);
  auto s = a->register_memory(src.data(), src.size(), MemKind::kHost);
  auto d = b->register_memory(dst.data(), dst.size(), MemKind::kHost);
  ASSERT_TRUE(s && d);
  auto peer = a->connect(b->address());
  ASSERT_TRUE(peer);
  constexpr size_t kWrites = 10000;  // more than a lane holds
  std::vector<WriteOp> ops;
  for (size_t i = 0; i < kWrites; ++i)
    ops.push_back({i + 1, &*s, 0, *peer, d->remote, 0, 8, true, static_cast<uint32_t>(i)});
  for (size_t at = 0; at < ops.size();) {
    PostResult r = a->post(std::span(ops).subspan(at));
    ASSERT_TRUE(r.error.is_ok());
    at += r.taken;
  }
  // The writer alone: completions stop where the lane is full (the reader has not polled).
  std::vector<Completion> c(256);
  size_t done = 0;
  for (int i = 0; i < 1000; ++i) done += *a->poll(c);
  EXPECT_LT(done, kWrites);
  EXPECT_GT(done, 0u);
  std::vector<Completion> rest;
  std::vector<uint32_t> got;
  pump(*a, *b, kWrites - done, kWrites, rest, got);
  EXPECT_EQ(done + rest.size(), kWrites);
  ASSERT_EQ(got.size(), kWrites);
  for (size_t i = 0; i < kWrites; ++i) ASSERT_EQ(got[i], i);
}

}  // namespace
}  // namespace weightcast::transport

namespace weightcast::transport {
namespace {

std::unique_ptr<Domain> open_hybrid(const std::string& host) {
  DomainConfig c;
  c.backend = "hybrid";
  c.provider = "tcp";
  c.address = "127.0.0.1";
  c.ipc_host = host;
  auto d = open_domain(c);
  EXPECT_TRUE(d) << d.status().message();
  return d ? std::move(d).value() : nullptr;
}

// One hybrid address with part `which` (0: ipc, 1: NIC) replaced by junk: a connection that
// still works never used that part.
std::vector<uint8_t> spoil(const std::vector<uint8_t>& addr, size_t which) {
  auto parts = unpack_addresses(addr);
  EXPECT_TRUE(parts);
  if (which == 0) {  // keep the host identity, break the segment's nonce
    std::string a((*parts)[0].begin(), (*parts)[0].end());
    a.back() = a.back() == '1' ? '2' : '1';
    (*parts)[0].assign(a.begin(), a.end());
  } else {
    (*parts)[1].assign(16, 0xee);
  }
  return pack_addresses(*parts);
}

// Posts `ops` from `from` and drives every side until each op completed and each receiver got
// an immediate; returns how many ops completed (errors fail the test).
size_t deliver(Domain& from, std::span<const WriteOp> ops,
               std::vector<std::pair<Domain*, std::vector<uint32_t>*>> to) {
  size_t posted = 0, done = 0;
  std::vector<Completion> cbuf(64);
  auto all_got = [&] {
    for (auto& [d, got] : to)
      if (got->empty()) return false;
    return true;
  };
  for (int spins = 0; (posted < ops.size() || done < ops.size() || !all_got()) && spins < 2000000;
       ++spins) {
    if (posted < ops.size()) {  // back-pressure (a NIC connection forming) is retried
      PostResult r = from.post(ops.subspan(posted));
      EXPECT_TRUE(r.error.is_ok()) << r.error.message();
      if (!r.error.is_ok()) return done;
      posted += r.taken;
    }
    auto n = from.poll(cbuf);
    EXPECT_TRUE(n);
    if (!n) return done;
    for (size_t i = 0; i < *n; ++i) {
      EXPECT_NE(cbuf[i].kind, Completion::Kind::kError) << cbuf[i].status.message();
      done += cbuf[i].kind == Completion::Kind::kWriteDone;
    }
    for (auto& [d, got] : to) {
      auto m = d->poll(cbuf);
      EXPECT_TRUE(m);
      if (!m) return done;
      for (size_t i = 0; i < *m; ++i)
        if (cbuf[i].kind == Completion::Kind::kImm) got->push_back(cbuf[i].imm);
    }
  }
  return done;
}

// The hybrid backend links a peer of this host over ipc and any other over libfabric: a write to
// a same-host peer lands although the NIC part of its address is junk, one to another host's peer
// although its ipc part is; both with their immediates; only the same-host peer has a device
// window's answer from the ipc side.
TEST(Hybrid, PeersOfThisHostGoOverIpcAndOthersOverTheNics) {
  auto a = open_hybrid("host-a"), b = open_hybrid("host-a"), c = open_hybrid("host-c");
  ASSERT_TRUE(a && b && c);
  EXPECT_EQ(a->caps().backend, "hybrid");
  std::vector<uint8_t> src(4096), to_b(4096, 0), to_c(4096, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 13 + 5);
  auto s = a->register_memory(src.data(), src.size(), MemKind::kHost);
  auto db = b->register_memory(to_b.data(), to_b.size(), MemKind::kHost);
  auto dc = c->register_memory(to_c.data(), to_c.size(), MemKind::kHost);
  ASSERT_TRUE(s && db && dc);
  EXPECT_NE(db->remote.key2, 0u);  // both keys travel
  // (RemoteRegion keeps both through its descriptor.)
  RemoteRegion rr{db->remote.len, {db->remote}};
  auto back = RemoteRegion::parse(rr.serialize());
  ASSERT_TRUE(back);
  EXPECT_EQ(back->per_nic[0].key2, db->remote.key2);
  auto pb = a->connect(spoil(b->address(), 1));
  ASSERT_TRUE(pb) << pb.status().message();
  auto pc = a->connect(spoil(c->address(), 0));
  ASSERT_TRUE(pc) << pc.status().message();
  EXPECT_NE(*pb, *pc);
  // (C must know A too for libfabric's connection; the NIC side of A's address is real.)
  ASSERT_TRUE(c->connect(a->address()));
  const WriteOp ops[] = {{1, &*s, 0, *pb, db->remote, 100, 1000, true, 0xB0B},
                         {2, &*s, 50, *pc, dc->remote, 300, 2000, true, 0xC0C}};
  std::vector<uint32_t> got_b, got_c;
  ASSERT_EQ(deliver(*a, ops, {{b.get(), &got_b}, {c.get(), &got_c}}), 2u);
  EXPECT_EQ(got_b, std::vector<uint32_t>{0xB0B});
  EXPECT_EQ(got_c, std::vector<uint32_t>{0xC0C});
  EXPECT_EQ(std::memcmp(to_b.data() + 100, src.data(), 1000), 0);
  EXPECT_EQ(std::memcmp(to_c.data() + 300, src.data() + 50, 2000), 0);
  EXPECT_NE(a->device_window(*pc, dc->remote, 0, 16).status().message().find("another host"),
            std::string::npos);
  EXPECT_NE(a->device_window(*pb, db->remote, 0, 16).status().message().find("host memory"),
            std::string::npos);
}

// A split region (a staged GPU tensor's, here host memory standing in): the sender of the
// receiver's host writes the memory itself over ipc, the other host's sender the landing area;
// the receiver can tell which is which from their addresses. Other backends refuse splits.
TEST(Hybrid, SplitRegionsTakeSameHostWritesDirectlyAndOthersInTheirLanding) {
  auto r = open_hybrid("host-a"), near = open_hybrid("host-a"), far = open_hybrid("host-c");
  ASSERT_TRUE(r && near && far);
  EXPECT_TRUE(r->caps().split_regions);
  std::vector<uint8_t> src(4096), tensor(4096, 0), landing(4096, 0);
  for (size_t i = 0; i < src.size(); ++i) src[i] = static_cast<uint8_t>(i * 7 + 3);
  auto dst = r->register_split(tensor.data(), MemKind::kHost, landing.data(), tensor.size());
  ASSERT_TRUE(dst) << dst.status().message();
  auto sn = near->register_memory(src.data(), src.size(), MemKind::kHost);
  auto sf = far->register_memory(src.data(), src.size(), MemKind::kHost);
  ASSERT_TRUE(sn && sf);
  EXPECT_TRUE(r->writes_direct(near->address()));
  EXPECT_FALSE(r->writes_direct(far->address()));
  EXPECT_FALSE(r->writes_direct(std::vector<uint8_t>(8, 1)));  // not a hybrid address
  auto pn = near->connect(r->address());
  auto pf = far->connect(r->address());
  ASSERT_TRUE(pn && pf);
  ASSERT_TRUE(r->connect(far->address()));
  std::vector<uint32_t> got_near, got_far;
  const WriteOp a[] = {{1, &*sn, 0, *pn, dst->remote, 0, 1000, true, 0xA}};
  const WriteOp b[] = {{2, &*sf, 100, *pf, dst->remote, 2000, 1500, true, 0xB}};
  ASSERT_EQ(deliver(*near, a, {{r.get(), &got_near}}), 1u);
  ASSERT_EQ(deliver(*far, b, {{r.get(), &got_far}}), 1u);
  EXPECT_EQ(got_near, std::vector<uint32_t>{0xA});
  EXPECT_EQ(got_far, std::vector<uint32_t>{0xB});
  const std::vector<uint8_t> zeros(4096, 0);
  EXPECT_EQ(std::memcmp(tensor.data(), src.data(), 1000), 0);
  EXPECT_EQ(std::memcmp(landing.data(), zeros.data(), 1000), 0);
  EXPECT_EQ(std::memcmp(landing.data() + 2000, src.data() + 100, 1500), 0);
  EXPECT_EQ(std::memcmp(tensor.data() + 1000, zeros.data(), 3096), 0);
  DomainConfig ipc;
  ipc.backend = "ipc";
  auto plain = open_domain(ipc);
  ASSERT_TRUE(plain);
  auto refused = (*plain)->register_split(tensor.data(), MemKind::kHost, landing.data(), 16);
  ASSERT_FALSE(refused);
  EXPECT_NE(refused.status().message().find("ipc backend writes every peer alike"),
            std::string::npos)
      << refused.status().message();
}

}  // namespace
}  // namespace weightcast::transport
