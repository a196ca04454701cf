#pragma once
// Model shapes without a file: hyper-parameters of well-known models, for dummy-weight
// runs (benchmarks of an 8B model need no 16 GB download; weights are generated on the
// backend, see Model's HParams constructor).
#include <string>
#include <vector>

#include "model/hparams.h"

namespace batchmax {

// Throws batchmax::Error listing the known presets.
HParams preset_hparams(const std::string& name);
const std::vector<std::string>& preset_names();

}  // namespace batchmax
