//! What the gate's screen says for each reason, in Chinese and English. Short enough
//! for a gate display; the Chinese wording follows the 2022 rollout's announcements.

use crate::model::{Reason, Verdict};

/// The (Chinese, English) message for a verdict and reason.
pub fn screen_message(verdict: Verdict, reason: Reason) -> (&'static str, &'static str) {
    match reason {
        Reason::HealthGreen | Reason::Exit | Reason::CheckOff | Reason::CheckShadow => ("请通行", "Please proceed"),
        Reason::HealthYellow | Reason::HealthRed => match verdict {
            Verdict::Allow => ("请通行", "Please proceed"),
            _ => ("健康码异常", "Health code abnormal"),
        },
        Reason::TestMissing => match verdict {
            Verdict::Allow => ("请通行", "Please proceed"),
            _ => ("未查询到规定时间内核酸阴性结果", "No recent negative test on record"),
        },
        Reason::NoHealthRecord => (
            "未查询到健康码信息，请联系工作人员",
            "No health-code record found: please see staff",
        ),
        Reason::NotLinked => (
            "票卡未关联，请通过票务升级服务关联或联系工作人员",
            "Not linked: upgrade via the ticketing upgrade service, or see staff",
        ),
        Reason::NotCovered => (
            "该票卡不支持自动核验，请人工核验",
            "Not covered by the automatic check: please see staff",
        ),
        Reason::HealthUnavailable => (
            "健康码暂时无法核验，请联系工作人员",
            "Health check unavailable: please see staff",
        ),
        Reason::TicketSuspended => (
            "电子单程票暂停使用，请通过购票渠道退款",
            "Electronic single-journey tickets are suspended: refund through the seller",
        ),
        Reason::CodeExpired => ("乘车码已过期，请刷新后重试", "Ride code expired: refresh and try again"),
        Reason::CodeReplayed => (
            "乘车码已使用，请刷新后重试",
            "Ride code already used: refresh and try again",
        ),
        Reason::CodeNotYetValid => (
            "乘车码时间有误，请校准手机时间",
            "Ride code not yet valid: check the phone's clock",
        ),
        Reason::CodeCertExpired | Reason::CodeCertRevoked => (
            "乘车码已失效，请联网后刷新",
            "Ride code no longer valid: go online and refresh",
        ),
        Reason::CodeUnknownIssuer => ("不支持该乘车码", "This ride-code app is not accepted here"),
        Reason::CodeSingleUseUnknown => (
            "乘车码暂时无法核验，请联系工作人员",
            "Ride code cannot be checked right now: please see staff",
        ),
        Reason::CodeMalformed
        | Reason::CodeOversize
        | Reason::CodeAlgNotAllowed
        | Reason::CodeUnknownKey
        | Reason::CodeBadSignature
        | Reason::CodeLifetimeTooLong
        | Reason::CodeCertInvalid
        | Reason::CodeWrongType => ("无效乘车码", "Invalid ride code"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_reason_has_both_messages() {
        for reason in Reason::ALL {
            for verdict in [Verdict::Allow, Verdict::Deny, Verdict::Assist] {
                let (zh, en) = screen_message(verdict, reason);
                assert!(!zh.is_empty() && !en.is_empty(), "{reason}");
            }
        }
    }

    #[test]
    fn refusals_match_the_rollout_wording() {
        assert_eq!(screen_message(Verdict::Deny, Reason::HealthRed).0, "健康码异常");
        assert!(
            screen_message(Verdict::Assist, Reason::NoHealthRecord)
                .0
                .starts_with("未查询到健康码信息")
        );
    }
}
