"""ISO 3166 code checks for policy validation.

Alpha-2 codes are the 249 officially assigned ISO 3166-1 codes, plus `XK`
(Kosovo), which is user-assigned in ISO but used by GeoIP databases. ISO 3166-2
subdivision codes are checked for shape (`CC-XXX`, with an assigned country
prefix); the full subdivision list changes often and is not bundled.
"""

from __future__ import annotations

import re

ALPHA2: frozenset[str] = frozenset(
    """
    AD AE AF AG AI AL AM AO AQ AR AS AT AU AW AX AZ BA BB BD BE BF BG BH BI BJ BL
    BM BN BO BQ BR BS BT BV BW BY BZ CA CC CD CF CG CH CI CK CL CM CN CO CR CU CV
    CW CX CY CZ DE DJ DK DM DO DZ EC EE EG EH ER ES ET FI FJ FK FM FO FR GA GB GD
    GE GF GG GH GI GL GM GN GP GQ GR GS GT GU GW GY HK HM HN HR HT HU ID IE IL IM
    IN IO IQ IR IS IT JE JM JO JP KE KG KH KI KM KN KP KR KW KY KZ LA LB LC LI LK
    LR LS LT LU LV LY MA MC MD ME MF MG MH MK ML MM MN MO MP MQ MR MS MT MU MV MW
    MX MY MZ NA NC NE NF NG NI NL NO NP NR NU NZ OM PA PE PF PG PH PK PL PM PN PR
    PS PT PW PY QA RE RO RS RU RW SA SB SC SD SE SG SH SI SJ SK SL SM SN SO SR SS
    ST SV SX SY SZ TC TD TF TG TH TJ TK TL TM TN TO TR TT TV TW TZ UA UG UM US UY
    UZ VA VC VE VG VI VN VU WF WS YE YT ZA ZM ZW XK
    """.split()
)

_REGION = re.compile(r"([A-Z]{2})-[A-Z0-9]{1,3}")


def is_country(code: str) -> bool:
    return code in ALPHA2


def is_region(code: str) -> bool:
    match = _REGION.fullmatch(code)
    return match is not None and match.group(1) in ALPHA2


def is_place(entry: str) -> bool:
    """Whether a suspension's jurisdiction entry names a place directly rather than a
    group: an ISO 3166-1 country code or an ISO 3166-2 region code, written upper-case
    (`JP`, `UA-43`). Group names may not take this form (the policy loader refuses
    them), so an entry is never both; `jp` is a group name, never Japan."""
    return is_country(entry) or is_region(entry)

