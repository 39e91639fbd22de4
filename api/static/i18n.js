// Chinese (default) and English strings of the console. Keys name the place they are used.
const STRINGS = {
  zh: {
    'app.title': '视频巡查审核', 'login.token': '令牌', 'login.submit': '登录',
    'login.bad': '令牌无效', 'nav.queue': '待审队列', 'nav.stats': '统计', 'nav.zones': '区域编辑',
    'nav.logout': '退出', 'live.title': '实时推送', 'f.status': '状态', 'f.type': '类型',
    'f.camera': '摄像头', 'f.sensor': '传感器', 'f.since': '起', 'f.until': '止', 'f.reset': '重置',
    'f.all': '全部', 'col.type': '类型', 'col.source': '来源', 'col.location': '位置',
    'col.age': '时长', 'col.status': '状态', 'queue.empty': '没有符合条件的线索', 'queue.more': '更多',
    'queue.keys': 'j/k 上下 · c 确认 · r 驳回 · i 退回补充 · m 合并 · a 标注/原图',
    'd.none': '选择一条线索查看详情', 'd.annotated': '标注图', 'd.clean': '原图',
    'd.first': '首次发现', 'd.latest': '最新画面', 'd.facts': '要素', 'd.history': '处理记录',
    'd.confirm': '确认 (c)', 'd.reject': '驳回 (r)', 'd.return': '退回补充 (i)', 'd.merge': '合并 (m)',
    'd.model': '模型', 'd.score': '置信度', 'd.zone': '区域', 'd.dwell': '持续', 'd.boxes': '目标数',
    'd.count': '报警次数', 'd.first_seen': '首次报警', 'd.last_seen': '最近报警',
    'd.cleared': '报警解除', 'd.ended': '画面消失',
    'd.alarm_type': '报警类型', 'd.measurements': '测量值', 'd.occurred': '发生时间',
    'd.category': '分类', 'd.unit': '建议处置单位', 'd.urgency': '紧急程度', 'd.severity': '级别',
    'd.hold': '夜间暂存至', 'd.arrive': '应到场时间', 'd.missing': '缺少要素',
    'd.description': '描述', 'd.noimage': '无图像证据', 'd.evidence': '证据',
    'd.reason_code': '驳回原因', 'd.reason': '说明', 'd.merged_into': '已合并到',
    'd.references': '关联线索', 'd.notuploaded': '画面尚未上传',
    'd.unloaded': '画面暂时无法加载，正在重试', 'd.crop': '目标截图',
    'd.undrawable': '画面无法显示',
    'd.folded': '共 {n} 次，最后一次 {at}',
    'd.elsewhere': '此线索已由 {who} 处理：{status}。按 j/k 或点击列表继续',
    'login.expired': '会话已过期，请重新登录',
    'login.other': '此浏览器已在另一标签页以 {who} 登录，未执行操作。请重新登录',
    'logout.unrecorded': '退出未能在服务器上记录；本浏览器已退出',
    'logout.failed': '退出失败，请重试',
    'dlg.reasonreq': '说明（必填）', 'dlg.needreason': '请填写说明',
    'dlg.badid': '线索编号应为完整的 UUID（如 123e4567-e89b-12d3-a456-426614174000）',
    'dlg.pickmerge': '请选择或粘贴要合并到的线索',
    'dlg.cancel': '取消', 'dlg.ok': '确定', 'dlg.reject': '驳回原因', 'dlg.return': '退回补充说明',
    'dlg.merge': '合并到', 'dlg.reason': '说明（可选）', 'dlg.nomerge': '附近没有可合并的线索',
    'dlg.mergeid': '或粘贴线索编号', 'dlg.mergeloading': '正在查找附近的线索…',
    'dlg.mergefinal': '不能合并到该线索',
    'r.false_positive': '误报', 'r.duplicate': '重复', 'r.licensed_activity': '许可经营',
    'r.out_of_jurisdiction': '非本辖区', 'r.insufficient_evidence': '证据不足', 'r.other': '其他',
    's.incomplete': '要素不全', 's.new': '待审', 's.confirmed': '已确认', 's.rejected': '已驳回',
    's.returned': '已退回', 's.merged': '已合并', 's.pulled': '已推送', 's.registered': '已立案',
    's.dispatched': '已派遣', 's.arrived': '已到场', 's.resolved': '已处置', 's.verified': '已核查',
    's.closed': '已结案', 'ok.confirm': '已确认', 'ok.reject': '已驳回', 'ok.return': '已退回',
    'ok.merge': '已合并', 'err.conflict': '状态已变化，无法执行',
    'err.changed': '此线索在您查看后已有变化，未执行；已重新载入，请核对后再处理',
    'err.notallowed': '当前状态不能执行此操作', 'st.counts': '数量',
    'st.precision': '准确率', 'st.sla': '超时未到场', 'st.by_type': '按类型', 'st.by_camera': '按摄像头',
    'st.by_status': '按状态', 'st.by_day': '按日期', 'st.total': '合计', 'st.last_days': '最近 30 天',
    'st.precision_type': '准确率（按类型）', 'st.precision_camera': '准确率（按摄像头）',
    'st.sla_summary': '到场时限', 'st.minutes': '时限（分钟）', 'st.breaches': '超时数',
    'st.arrived_at': '到场时间',
    'z.snapshot': '获取实时画面', 'z.new': '新建区域', 'z.delete': '删除区域',
    'z.help': '单击添加顶点 · 拖动移动 · 选中顶点按 Delete 删除', 'z.validate': '校验并生成 YAML',
    'z.copy': '复制', 'z.download': '下载', 'z.id': '区域编号', 'z.rules': '规则',
    'z.schedule': '启用时段', 'z.copied': '已复制', 'z.valid': 'YAML 校验通过',
    'z.nosnap': '无法获取画面', 'z.points': '个顶点',
    'age.s': '秒', 'age.m': '分钟', 'age.h': '小时', 'age.d': '天',
    // History entries' actions (api/service.py _history): a step, or the status it led to.
    'h.created': '创建', 'h.updated': '更新', 'h.supplemented': '补充要素', 'h.held': '夜间暂存',
    'h.released': '暂存结束', 'h.auto_confirmed': '自动确认', 'h.confirmed': '确认',
    'h.rejected': '驳回', 'h.returned': '退回补充', 'h.merged': '合并', 'h.merged_from': '并入线索',
    'h.pulled': '平台接收', 'h.registered': '立案', 'h.dispatched': '派遣', 'h.arrived': '到场',
    'h.resolved': '处置', 'h.verified': '核查', 'h.closed': '结案',
  },
  en: {
    'app.title': 'Video patrol review', 'login.token': 'Token', 'login.submit': 'Sign in',
    'login.bad': 'Invalid token', 'nav.queue': 'Queue', 'nav.stats': 'Statistics',
    'nav.zones': 'Zone editor', 'nav.logout': 'Sign out', 'live.title': 'Live updates',
    'f.status': 'Status', 'f.type': 'Type', 'f.camera': 'Camera', 'f.sensor': 'Sensor',
    'f.since': 'Since', 'f.until': 'Until', 'f.reset': 'Reset', 'f.all': 'All',
    'col.type': 'Type', 'col.source': 'Source', 'col.location': 'Location', 'col.age': 'Age',
    'col.status': 'Status', 'queue.empty': 'No candidates match', 'queue.more': 'More',
    'queue.keys': 'j/k move · c confirm · r reject · i return · m merge · a annotated/clean',
    'd.none': 'Select a candidate', 'd.annotated': 'Annotated', 'd.clean': 'Clean',
    'd.first': 'First seen', 'd.latest': 'Latest', 'd.facts': 'Facts', 'd.history': 'History',
    'd.confirm': 'Confirm (c)', 'd.reject': 'Reject (r)', 'd.return': 'Return (i)',
    'd.merge': 'Merge (m)', 'd.model': 'Model', 'd.score': 'Score', 'd.zone': 'Zone',
    'd.dwell': 'Dwell', 'd.boxes': 'Objects', 'd.count': 'Alarm count',
    'd.first_seen': 'First alarm', 'd.last_seen': 'Last alarm', 'd.alarm_type': 'Alarm type',
    'd.cleared': 'Alarm cleared', 'd.ended': 'Last seen',
    'd.measurements': 'Measurements', 'd.occurred': 'Occurred', 'd.category': 'Category',
    'd.unit': 'Suggested unit', 'd.urgency': 'Urgency', 'd.severity': 'Severity',
    'd.hold': 'Held until', 'd.arrive': 'Arrive by', 'd.missing': 'Missing elements',
    'd.description': 'Description', 'd.noimage': 'No image evidence', 'd.evidence': 'Evidence',
    'd.reason_code': 'Reject reason', 'd.reason': 'Note', 'd.merged_into': 'Merged into',
    'd.references': 'References', 'd.notuploaded': 'Frame not uploaded yet',
    'd.unloaded': 'Frame could not be loaded; retrying', 'd.crop': 'Crop',
    'd.undrawable': 'Frame cannot be shown',
    'd.folded': '×{n} · last {at}',
    'd.elsewhere': 'Decided by {who} meanwhile: {status}. Move on with j/k or a click',
    'login.expired': 'The session has expired; sign in again',
    'login.other': 'Signed in as {who} in another tab of this browser; nothing was done. Sign in again',
    'logout.unrecorded': 'Logout could not be recorded on the server; this browser is signed out',
    'logout.failed': 'Sign-out failed; try again',
    'dlg.reasonreq': 'Note (required)', 'dlg.needreason': 'Please write a note',
    'dlg.badid': 'A candidate id is a full UUID (like 123e4567-e89b-12d3-a456-426614174000)',
    'dlg.pickmerge': 'Choose or paste the candidate to merge into',
    'dlg.cancel': 'Cancel', 'dlg.ok': 'OK', 'dlg.reject': 'Reject reason',
    'dlg.return': 'Return for missing information', 'dlg.merge': 'Merge into',
    'dlg.reason': 'Note (optional)', 'dlg.nomerge': 'No candidate nearby to merge into',
    'dlg.mergeid': 'or paste a candidate id', 'dlg.mergeloading': 'Looking for candidates nearby…',
    'dlg.mergefinal': 'Cannot merge into that candidate',
    'r.false_positive': 'False positive', 'r.duplicate': 'Duplicate',
    'r.licensed_activity': 'Licensed activity', 'r.out_of_jurisdiction': 'Out of jurisdiction',
    'r.insufficient_evidence': 'Insufficient evidence', 'r.other': 'Other',
    's.incomplete': 'Incomplete', 's.new': 'New', 's.confirmed': 'Confirmed',
    's.rejected': 'Rejected', 's.returned': 'Returned', 's.merged': 'Merged', 's.pulled': 'Pulled',
    's.registered': 'Registered', 's.dispatched': 'Dispatched', 's.arrived': 'Arrived',
    's.resolved': 'Resolved', 's.verified': 'Verified', 's.closed': 'Closed',
    'ok.confirm': 'Confirmed', 'ok.reject': 'Rejected', 'ok.return': 'Returned',
    'ok.merge': 'Merged', 'err.conflict': 'The candidate changed; not applied',
    'err.changed':
      'The case changed since you read it; not applied. It is shown as it is now: check it again',
    'err.notallowed': 'Not possible in the current status',
    'st.counts': 'Counts', 'st.precision': 'Precision', 'st.sla': 'SLA breaches',
    'st.by_type': 'By type', 'st.by_camera': 'By camera', 'st.by_status': 'By status',
    'st.by_day': 'By day', 'st.total': 'Total', 'st.last_days': 'Last 30 days',
    'st.precision_type': 'Precision by type', 'st.precision_camera': 'Precision by camera',
    'st.sla_summary': 'Arrival SLA', 'st.minutes': 'Minutes', 'st.breaches': 'Breaches',
    'st.arrived_at': 'Arrived',
    'z.snapshot': 'Fetch snapshot', 'z.new': 'New zone', 'z.delete': 'Delete zone',
    'z.help': 'Click to add a point · drag to move · Delete removes the selected point',
    'z.validate': 'Validate and get YAML', 'z.copy': 'Copy', 'z.download': 'Download',
    'z.id': 'Zone id', 'z.rules': 'Rules', 'z.schedule': 'Active hours', 'z.copied': 'Copied',
    'z.valid': 'YAML is valid', 'z.nosnap': 'No snapshot', 'z.points': 'points',
    'age.s': 's', 'age.m': 'min', 'age.h': 'h', 'age.d': 'd',
    'h.created': 'Created', 'h.updated': 'Updated', 'h.supplemented': 'Supplemented',
    'h.held': 'Held for the night', 'h.released': 'Released', 'h.auto_confirmed': 'Auto-confirmed',
    'h.confirmed': 'Confirmed', 'h.rejected': 'Rejected', 'h.returned': 'Returned',
    'h.merged': 'Merged', 'h.merged_from': 'Case merged in', 'h.pulled': 'Pulled by the platform',
    'h.registered': 'Registered', 'h.dispatched': 'Dispatched', 'h.arrived': 'Arrived',
    'h.resolved': 'Resolved', 'h.verified': 'Verified', 'h.closed': 'Closed',
  },
};

export const STATUSES = [
  'new', 'incomplete', 'confirmed', 'rejected', 'returned', 'merged', 'pulled', 'registered',
  'dispatched', 'arrived', 'resolved', 'verified', 'closed',
];
export const REASON_CODES = [
  'false_positive', 'duplicate', 'licensed_activity', 'out_of_jurisdiction',
  'insufficient_evidence', 'other',
];

let lang = localStorage.getItem('gp.lang') || 'zh';

export function currentLang() { return lang; }

export function t(key) {
  return STRINGS[lang][key] ?? STRINGS.zh[key] ?? key;
}

// A string with its {name} places filled in, in one pass: a value is taken as it is (a
// reviewer named "$&" stays so; a value naming another place does not get filled in).
export function tf(key, values) {
  const fill = (place, name) => (name in values ? String(values[name]) : place);
  return t(key).replace(/\{(\w+)\}/g, fill);
}

// A history entry's action; one this console does not know (a newer API's) as the API names it.
export function actionName(action) {
  const key = `h.${action}`;
  return STRINGS[lang][key] ?? STRINGS.zh[key] ?? action;
}

export function setLang(next) {
  lang = next;
  localStorage.setItem('gp.lang', next);
  applyStatic(document);
}

// Translate the static markup: elements carry data-i18n (text) or data-i18n-title.
export function applyStatic(root) {
  document.documentElement.lang = lang === 'zh' ? 'zh-CN' : 'en';
  root.querySelectorAll('[data-i18n]').forEach((el) => { el.textContent = t(el.dataset.i18n); });
  root.querySelectorAll('[data-i18n-title]').forEach((el) => { el.title = t(el.dataset.i18nTitle); });
  root.querySelectorAll('.lang-toggle').forEach((el) => { el.textContent = lang === 'zh' ? 'EN' : '中文'; });
  document.title = `gridpatrol · ${t('app.title')}`;
}
