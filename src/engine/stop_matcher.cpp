#include "engine/stop_matcher.h"

#include <algorithm>

#include "core/error.h"

namespace cascade {

StopMatcher::StopMatcher(std::vector<std::string> stops) : stops_(std::move(stops)) {
  for (std::size_t i = 0; i < stops_.size(); ++i) {
    if (stops_[i].empty()) {
      throw_error(ErrorCode::kInvalidArgument,
                  "stop[{}] is an empty string; stop strings must be non-empty", i);
    }
    max_len_ = std::max(max_len_, stops_[i].size());
  }
}

StopFeedResult StopMatcher::feed(std::string_view new_text) {
  StopFeedResult out;
  if (stopped()) {
    out.stopped = true;
    return out;
  }
  if (stops_.empty()) {
    out.emit.assign(new_text);
    return out;
  }
  held_.append(new_text);
  const std::string_view buf = held_;

  // Earliest-ending occurrence over all stops. For one stop the leftmost occurrence also ends
  // first; none can lie wholly inside the held tail, which is shorter than every stop it prefixes.
  std::size_t best_end = std::string_view::npos;
  std::size_t best_start = 0;
  for (std::size_t i = 0; i < stops_.size(); ++i) {
    const std::size_t start = buf.find(stops_[i]);
    if (start == std::string_view::npos) continue;
    const std::size_t end = start + stops_[i].size();
    if (end < best_end || (end == best_end && start < best_start)) {
      best_end = end;
      best_start = start;
      matched_ = static_cast<int>(i);
    }
  }
  if (matched_ >= 0) {
    out.emit.assign(buf.substr(0, best_start));
    out.stopped = true;
    held_.clear();
    return out;
  }

  // Hold back the longest suffix that is a proper prefix of some stop: any later match must start
  // inside it.
  std::size_t hold = 0;
  for (std::size_t len = std::min(buf.size(), max_len_ - 1); len > 0 && hold == 0; --len) {
    const std::string_view tail = buf.substr(buf.size() - len);
    for (const std::string& stop : stops_) {
      if (stop.size() > len && std::string_view(stop).starts_with(tail)) {
        hold = len;
        break;
      }
    }
  }
  out.emit.assign(buf.substr(0, buf.size() - hold));
  held_.erase(0, buf.size() - hold);
  return out;
}

std::string StopMatcher::flush() {
  std::string rest;
  rest.swap(held_);
  return rest;
}

}  // namespace cascade
