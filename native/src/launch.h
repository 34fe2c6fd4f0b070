// From a checked Problem to kernels on the caller's stream: device facts
// (cached per device), the split choice, and the launch.
#pragma once

#include "flashdecoding/flashdecoding.h"
#include "problem.h"

namespace fd {

// Validates (check_all) and launches. Returns a status; on failure nothing ran.
int run_problem(const Problem& p);

// The plan run_problem would follow on the current device, without launching.
int plan_problem(const Problem& p, fd_launch_plan* plan);

}  // namespace fd
