// The Python model code an export carries (checkpoints/remote_code/*.py, compiled into the
// binary at build time), so that transformers' trust_remote_code=True runs the model with
// DMS eviction; see docs/remote_code.md.
#pragma once

namespace dms {

const char* remote_configuration_py();  // configuration_dms.py
const char* remote_modeling_py();       // modeling_dms.py

}  // namespace dms
