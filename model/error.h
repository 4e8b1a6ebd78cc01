// Transitional: the error type lives in common/error.h.
#pragma once
#include "common/error.h"
