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
  const double w = left + cell * static_cast<double>(R) + 20,
               h = top + cell * static_cast<double>(S) + 40;
  std::string o = fmt::format(
      "<svg xmlns=\"http://www.w3.org/2000/svg\" width=\"{:.0f}\" height=\"{:.0f}\" "
      "font-family=\"sans-serif\" font-size=\"11\">\n<rect width=\"100%\" height=\"100%\" "
      "fill=\"white\"/>\n"
      "<text x=\"{}\" y=\"18\" font-size=\"14\">bytes per sender (rows, trainer ranks) x receiver "
      "(columns, inference ranks); max cell {}</text>\n"
      "<text x=\"{}\" y=\"{:.0f}\">receivers 0..{}</text>\n"
      "<text x=\"12\" y=\"{}\" transform=\"rotate(-90 12 {})\">senders 0..{}</text>\n",
      w, h, left, human_bytes(mx), left, top - 8, R ? R - 1 : 0, top + 60, top + 60, S ? S - 1 : 0);
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
  o += fmt::format(
      "<rect x=\"{}\" y=\"{}\" width=\"{:.1f}\" height=\"{:.1f}\" fill=\"none\" "
      "stroke=\"#888\"/>\n</svg>\n",
      left, top, cell * static_cast<double>(R), cell * static_cast<double>(S));
  return o;
}

}  // namespace weightcast::plan
