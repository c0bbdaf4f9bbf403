// The console works without this script; it only adds conveniences (see data-* attributes in templates).
"use strict";
