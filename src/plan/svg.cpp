// Sender x receiver byte matrix as an SVG heat map.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>

#include "weightcast/plan/report.h"

namespace weightcast::plan {

std::string svg_matrix(const Plan& p) {
  const size_t S = p.senders.size(), R = p.receivers.size();
  std::vector<double> m(S * R, 0.0);
  for (const Write& w : p.writes)
    m[w.sender * R + p.dests[w.dest].receiver] += static_cast<double>(w.len);
  const double mx = std::max(1.0, *std::max_element(m.begin(), m.end()));
  const double cell = std::clamp(900.0 / static_cast<double>(std::max(S, R)), 2.0, 24.0);
  const double left = 70, top = 60;
  const double w = std::max(left + cell * static_cast<double>(R) + 20, left + 640),
               h = top + cell * static_cast<double>(S) + 70;
  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"18\" font-size=\"14\">bytes per sender x receiver (max cell {})</text>\n"
      "<text x=\"{}\" y=\"{:.0f}\">receivers (inference ranks) 0..{}</text>\n",
      w, h, left, human_bytes(mx), left, top - 28, R ? R - 1 : 0);
  const double mid = top + cell * static_cast<double>(S) / 2;
  o += fmt::format(
      "<text x=\"14\" y=\"{0:.0f}\" text-anchor=\"middle\" transform=\"rotate(-90 14 {0:.0f})\">"
      "senders (trainer ranks) 0..{1}</text>\n",
      mid, S ? S - 1 : 0);
  for (size_t s = 0; s < S; ++s)
    for (size_t r = 0; r < R; ++r) {
      const double v = m[s * R + r];
      if (v <= 0) continue;
      const int shade = static_cast<int>(std::lround(235.0 * (1.0 - v / mx)));
      o += fmt::format(
          "<rect x=\"{:.1f}\" y=\"{:.1f}\" width=\"{:.1f}\" height=\"{:.1f}\" "
          "fill=\"rgb({},{},255)\"><title>sender {} -> receiver {}: {}</title></rect>\n",
          left + cell * static_cast<double>(r), top + cell * static_cast<double>(s), cell, cell,
          shade, shade, s, r, human_bytes(v));
    }
  // Rank labels on both axes: every k-th rank, k a power of two that leaves ~30 px between.
  const auto every = [&](size_t n) {
    size_t k = 1;
    while (k < n && cell * static_cast<double>(k) < 30) k *= 2;
    return k;
  };
  for (size_t r = 0, k = every(R); r < R; r += k)
    o += fmt::format("<text x=\"{:.1f}\" y=\"{:.0f}\" font-size=\"9\">{}</text>\n",
                     left + cell * static_cast<double>(r), top - 22 + 10, r);
  for (size_t q = 0, k = every(S); q < S; q += k)
    o += fmt::format(
        "<text x=\"{:.0f}\" y=\"{:.1f}\" font-size=\"9\" "
        "text-anchor=\"end\">{}</text>\n",
        left - 4, top + cell * static_cast<double>(q) + std::min(cell, 10.0), q);
  const double bottom = top + cell * static_cast<double>(S);
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#888\"/>\n",
      left, top, cell * static_cast<double>(R), cell * static_cast<double>(S));
  // The colour legend: five shades with the bytes they stand for; white is no bytes.
  o += fmt::format("<text x=\"{}\" y=\"{:.0f}\">bytes per cell:</text>\n", left, bottom + 30);
  o += fmt::format(
      "<rect x=\"{0:.0f}\" y=\"{1:.0f}\" width=\"14\" height=\"12\" fill=\"white\" "
      "stroke=\"#888\"/><text x=\"{2:.0f}\" y=\"{3:.0f}\">none</text>\n",
      left + 90, bottom + 20, left + 108, bottom + 30);
  for (int i = 1; i <= 4; ++i) {
    const double v = mx * i / 4;
    const int shade = static_cast<int>(std::lround(235.0 * (1.0 - v / mx)));
    const double lx = left + 90 + 95 * i;
    o += fmt::format(
        "<rect x=\"{:.0f}\" y=\"{:.0f}\" width=\"14\" height=\"12\" fill=\"rgb({},{},255)\"/>"
        "<text x=\"{:.0f}\" y=\"{:.0f}\">{}</text>\n",
        lx, bottom + 20, shade, shade, lx + 18, bottom + 30, human_bytes(v));
  }
  o += "</svg>\n";
  return o;
}

}  // namespace weightcast::plan
