#include "tests/tb_event.h"

#include "event.pb.h"

namespace dms::test {

bool parse_tb_event(const std::string& bytes, TbEvent& out) {
  tensorflow::Event e;
  if (!e.ParseFromString(bytes)) return false;
  out.wall_time = e.wall_time();
  out.step = e.step();
  out.file_version = e.file_version();
  out.scalars.clear();
  for (const auto& v : e.summary().value()) out.scalars.emplace_back(v.tag(), v.simple_value());
  return true;
}

}  // namespace dms::test
